"""Prompt-cache writes and images, priced exactly, carried to the ledger (and through a recovery), and held for."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client

from billing import budgets, journal, recovery
from billing.models import Budget, Price, UsageRecord, picos_to_micros_up
from billing.services import UsageEntry, build_record, minimal_record
from proxy import metering, routing, sizing
from proxy.parsing import parse_data
from proxy.providers.base import Usage

from ..conftest import Party
from ..factories import make_route
from ..live import serve_app

SONNET = dict(input_per_million=D("3"), output_per_million=D("15"), cached_input_per_million=D("0.3"),
              cache_write_per_million=D("3.75"), per_image=D("0.0048"))


def price(**fields: Any) -> Price:
    return Price(model="m", **{**dict(input_per_million=D("1"), output_per_million=D("2")), **fields})


def test_plain_cached_cache_write_and_images_each_at_their_own_price() -> None:
    sonnet = price(**SONNET)
    # 3,000 plain at $3/M, 2,000 read at $0.30/M, 5,000 written at $3.75/M, 100 out at $15/M, 2 images at $0.0048.
    cost = sonnet.cost_picos(prompt_tokens=10_000, cached_tokens=2_000, cache_write_tokens=5_000,
                             completion_tokens=100, images=2)
    assert cost == (3_000 * 3 + 2_000 * D("0.3") + 5_000 * D("3.75") + 100 * 15) * 10**6 + 2 * 4_800 * 10**6
    assert cost == 39_450_000_000
    assert sonnet.cost_picos(prompt_tokens=10_000, completion_tokens=100) == (30_000 + 1_500) * 10**6  # no cache use


def test_a_missing_cache_write_price_is_the_input_price_and_images_cost_nothing_by_default() -> None:
    plain = price(cached_input_per_million=D("0.5"))
    assert plain.cost_picos(prompt_tokens=1_000, cache_write_tokens=600, completion_tokens=0) == 1_000 * 10**6
    assert plain.cost_picos(prompt_tokens=1_000, cached_tokens=400, cache_write_tokens=600, completion_tokens=0,
                            images=5) == (400 * D("0.5") + 600) * 10**6


@pytest.mark.parametrize(("fields", "usage", "picos"), [
    # The smallest price the column holds: one token costs a whole number of picos, never rounded.
    (dict(input_per_million=D("0.000001"), cache_write_per_million=D("0.000003")),
     dict(prompt_tokens=2, cache_write_tokens=1), 1 + 3),
    # Reads and writes can never bill more prompt tokens than there were: writes fill only what reads left.
    (dict(cache_write_per_million=D("10")), dict(prompt_tokens=100, cached_tokens=70, cache_write_tokens=90),
     70 * 10**6 + 30 * 10 * 10**6),
    (dict(cache_write_per_million=D("10")), dict(prompt_tokens=100, cache_write_tokens=-5), 100 * 10**6),
    # A billion written tokens at a six-decimal price, exactly.
    (dict(cache_write_per_million=D("3.750001")), dict(prompt_tokens=10**9, cache_write_tokens=10**9),
     3_750_001 * 10**9),
    # An image priced to the micro-dollar is a million picos per micro-dollar.
    (dict(per_image=D("0.000001")), dict(prompt_tokens=0, images=3), 3 * 10**6),
    # A price set by hand with more decimals than the column: half up, once, on the whole.
    (dict(cache_write_per_million=D("0.0000015")), dict(prompt_tokens=1, cache_write_tokens=1), 2),
])
def test_decimal_edges_are_exact(fields: dict[str, D], usage: dict[str, int], picos: int) -> None:
    assert price(**{"input_per_million": D("1"), **fields}).cost_picos(completion_tokens=0, **usage) == picos


@pytest.mark.parametrize("fields", [SONNET, dict(cache_write_per_million=D("2"), cached_input_per_million=D("0.1")),
                                    dict(cache_write_per_million=D("0.5")), dict(cached_input_per_million=D("4")),
                                    dict(per_image=D("0.000001"), per_request=D("0.01"))])
def test_the_worst_case_is_never_below_any_split_of_the_prompt(fields: dict[str, D]) -> None:
    model = price(**fields)
    prompt, completion, images = 1_000, 300, 2
    worst = model.worst_micros(prompt_tokens=prompt, completion_tokens=completion, images=images)
    costs = [model.cost_picos(prompt_tokens=prompt, cached_tokens=read, cache_write_tokens=written,
                              completion_tokens=done, images=images)
             for read, written, done in itertools.product(range(0, prompt + 1, 250), range(0, prompt + 1, 250),
                                                          (0, completion))]
    assert worst * 10**6 >= max(costs)
    assert worst == picos_to_micros_up(max(costs))  # and no more than the dearest split, rounded up to a micro-dollar


def entry(**fields: Any) -> UsageEntry:
    values: dict[str, Any] = dict(tenant_id=0, key_id=None, endpoint="chat", end_reason="complete", status_code=200,
                                  public_model="sonnet", provider="anthropic", upstream_model="claude-x", ttfb_ms=5,
                                  prompt_tokens=10_000, completion_tokens=100, cached_tokens=2_000,
                                  cache_write_tokens=5_000, images=2)
    return UsageEntry(**{**values, **fields})


def test_the_ledger_row_keeps_cache_writes_and_images_and_prices_them(alice: Party) -> None:
    Price.objects.create(model="sonnet", **SONNET)
    record = build_record(entry(tenant_id=alice.tenant.pk))
    assert (record.cache_write_tokens, record.images, record.cost_picos) == (5_000, 2, 39_450_000_000)
    again = minimal_record(record)  # the form a refused row is written in keeps them too
    assert (again.cache_write_tokens, again.images, again.cost_picos) == (5_000, 2, 39_450_000_000)


def test_a_killed_process_row_keeps_its_cache_writes_and_images(alice: Party, tmp_path: Path) -> None:
    Price.objects.create(model="sonnet", **SONNET)
    book = journal.Journal(tmp_path)
    begin = {"tenant_id": alice.tenant.pk, "endpoint": "chat", "public_model": "sonnet", "provider": "anthropic",
             "upstream_model": "claude-x", "stream": True, "at": time.time(), "prompt_tokens": 9_000,
             "images": 2, "hold": {"keys": ["k"], "amount": 50_000}}
    book.begin("0" * 32, begin, settles=True)
    meter = metering.Meter("chat")
    meter.request_id, meter.begun, meter.usage = "0" * 32, True, Usage(10_000, 0, 2_000, 5_000)
    meter.texts = ["Half an ans"]
    real = metering.journal
    metering.journal = lambda: book  # type: ignore[assignment]
    try:
        meter.checkpoint(0.0)  # what the stream noted before the process died
    finally:
        metering.journal = real
    requests = journal.read(book.path)
    assert requests["0" * 32].usage == {"prompt_tokens": 10_000, "completion_tokens": 0, "cached_tokens": 2_000,
                                        "cache_write_tokens": 5_000}
    [row] = recovery.rows_to_write(requests)
    assert (row.end_reason, row.prompt_tokens, row.cached_tokens, row.cache_write_tokens, row.images) == (
        "gateway_lost", 10_000, 2_000, 5_000, 2)
    assert row.cost_picos == (3_000 * 3 + 2_000 * D("0.3") + 5_000 * D("3.75")) * 10**6 + 2 * 4_800 * 10**6 \
        + row.completion_tokens * 15 * 10**6
    assert recovery.costs(requests, [row]) == {"0" * 32: row.cost_picos}


class CachingUpstream:
    """Anthropic's Messages API answering that the whole prompt was written to the cache: the dearest answer."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        self.seen.append(request)
        usage = {"input_tokens": 0, "cache_creation_input_tokens": self.prompt_tokens, "cache_read_input_tokens": 0}
        out = request["max_tokens"]
        if request.get("stream"):
            events = [{"type": "message_start", "message": {"id": "msg_w", "type": "message", "role": "assistant",
                                                            "content": [], "usage": {**usage, "output_tokens": 1}}},
                      {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                      {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Seen."}},
                      {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": out}},
                      {"type": "message_stop"}]
            payload = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
            kind = b"text/event-stream"
        else:
            payload = json.dumps({"id": "msg_w", "type": "message", "role": "assistant", "model": request["model"],
                                  "content": [{"type": "text", "text": "Seen."}], "stop_reason": "max_tokens",
                                  "stop_sequence": None, "usage": {**usage, "output_tokens": out}}).encode()
            kind = b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def upstream() -> Iterator[tuple[CachingUpstream, str]]:
    app = CachingUpstream()
    with serve_app(app) as url:
        yield app, url


@pytest.fixture
def sonnet(upstream: tuple[CachingUpstream, str], db: None) -> CachingUpstream:
    app, url = upstream
    routing.invalidate()
    make_route("sonnet", upstream_model="claude-x", base_url=url, kind="anthropic", provider_name="fake-anthropic")
    Price.objects.create(model="sonnet", **SONNET)
    return app


BIG_PROMPT = {"role": "system", "content": [{"type": "text", "text": "A manual. " * 400,
                                             "cache_control": {"type": "ephemeral"}}]}


def ask(client: Client, party: Party, data: dict[str, Any]) -> Any:
    if not data.get("stream"):
        return client.post("/v1/chat/completions", json.dumps(data), content_type="application/json",
                           headers=party.auth)

    async def streamed() -> Any:  # read in the event loop the view ran in, to the end (the row is written then)
        response = await AsyncClient().post("/v1/chat/completions", json.dumps(data), content_type="application/json",
                                            headers=party.auth)
        assert b"[DONE]" in b"".join([part async for part in response.streaming_content])
        return response

    return async_to_sync(streamed)()


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_written_whole_to_the_cache_settles_within_its_hold(client: Client, alice: Party,
                                                                     sonnet: CachingUpstream, stream: bool) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, amount=D("10"), period="day")
    data = {"model": "sonnet", "max_tokens": 200, "stream": stream,
            "messages": [BIG_PROMPT, {"role": "user", "content": [
                {"type": "text", "text": "What does it say?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/page.png"}}]}]}
    worst = sizing.worst_case(parse_data(data, "chat"), "claude-x")
    sonnet.prompt_tokens = worst.prompt_tokens  # the provider bills every prompt token the gate counted as a write
    response = ask(client, alice, data)
    assert response.status_code == 200
    assert sonnet.seen[-1]["system"][0]["cache_control"] == {"type": "ephemeral"}
    [row] = UsageRecord.objects.filter(request_id=response["x-request-id"])
    assert (row.prompt_tokens, row.cache_write_tokens, row.cached_tokens, row.completion_tokens, row.images) == (
        worst.prompt_tokens, worst.prompt_tokens, 0, 200, 1)
    assert row.cost_picos == (worst.prompt_tokens * D("3.75") + 200 * 15) * 10**6 + 4_800 * 10**6
    # The hold covered it; at the input price it would not have (the bug this guards against).
    assert row.gate["held_micros"] * 10**6 >= row.cost_picos
    assert row.price is not None
    assert row.price.cost_micros(prompt_tokens=worst.prompt_tokens, completion_tokens=200) * 10**6 < row.cost_picos
    state = budgets.status(budget)
    assert (state.spent_picos, state.reserved_micros) == (row.cost_picos, 0)  # the counters equal the ledger


def test_images_are_counted_and_billed_without_a_budget_too(client: Client, alice: Party,
                                                           sonnet: CachingUpstream) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    data = {"model": "sonnet", "max_tokens": 10, "messages": [{"role": "user", "content": [image, image]}]}
    sonnet.prompt_tokens = 100
    response = ask(client, alice, data)
    assert response.status_code == 200
    [row] = UsageRecord.objects.filter(request_id=response["x-request-id"])
    assert (row.images, row.cache_write_tokens) == (2, 100)
    assert row.cost_picos == (100 * D("3.75") + 10 * 15) * 10**6 + 2 * 4_800 * 10**6
    assert sonnet.seen[-1]["messages"][0]["content"][0]["source"] == {"type": "base64", "media_type": "image/png",
                                                                      "data": "iVBORw0KGgo="}


def test_a_route_without_a_per_image_price_notes_no_images(client: Client, alice: Party,
                                                          sonnet: CachingUpstream) -> None:
    Price.objects.filter(model="sonnet").update(per_image=D(0))
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    sonnet.prompt_tokens = 50
    response = ask(client, alice, {"model": "sonnet", "max_tokens": 10,
                                   "messages": [{"role": "user", "content": [image]}]})
    [row] = UsageRecord.objects.filter(request_id=response["x-request-id"])
    # Nothing to price them at, so the gate does not walk the prompt for them on an unbudgeted request.
    assert (row.images, row.cost_picos) == (0, (50 * D("3.75") + 10 * 15) * 10**6)


def test_the_requests_export_adds_cache_writes_and_images_after_the_older_columns(alice: Party, bob: Party) -> None:
    from .test_export import record, rows_of, signed_in

    record(alice, picos=39_450_000_000, cache_write_tokens=5_000, images=2)
    record(bob, picos=5, cache_write_tokens=777, images=9)
    [row] = rows_of(signed_in(alice).get("/requests/export.csv"))
    # New columns go at the end, so readers of the older columns find them where they were.
    assert list(row)[-6:] == ["cost_usd", "cache_write_tokens", "images", "project", "tags", "end_user"]
    assert (row["cost_usd"], row["cache_write_tokens"], row["images"]) == ("0.039450000000", "5000", "2")


def test_concurrent_cache_writing_requests_never_pass_a_hard_budget(alice: Party, sonnet: CachingUpstream) -> None:
    data = {"model": "sonnet", "max_tokens": 50, "messages": [BIG_PROMPT, {"role": "user", "content": "Summarise."}]}
    worst = sizing.worst_case(parse_data(data, "chat"), "claude-x")
    sonnet.prompt_tokens = worst.prompt_tokens
    each = Price.objects.get(model="sonnet").worst_micros(prompt_tokens=worst.prompt_tokens, completion_tokens=50)
    budget = Budget.objects.create(tenant=alice.tenant, amount=D(each * 4 + each // 2) / 10**6, period="day")

    async def burst() -> list[Any]:
        async def one() -> Any:
            return await AsyncClient().post("/v1/chat/completions", json.dumps(data), content_type="application/json",
                                            headers=alice.auth)
        return await asyncio.gather(*[one() for _ in range(16)])

    answers = async_to_sync(burst)()
    assert sorted({a.status_code for a in answers}) == [200, 429]
    rows = UsageRecord.objects.filter(tenant=alice.tenant)
    assert rows.count() == 16  # one row per request, refused ones included
    served = rows.filter(status_code=200)
    assert 1 <= served.count() <= 4  # each written whole to the cache: only whole holds fit
    state = budgets.status(budget)
    assert state.spent_picos == sum(r.cost_picos for r in rows) and state.reserved_micros == 0
    assert state.spent_picos <= state.limit_micros * 10**6  # the provider never billed beyond the worst case held
