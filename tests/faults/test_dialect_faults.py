"""Messages and Responses requests on every way a request can fail: one ledger row each, the dialect's own answer.

In process (the /v1 handler, the mock upstream and a native upstream of the test's own in threads):
- the provider fails before the first byte, after Tollgate's retries: the dialect's error envelope, row upstream_error;
- the provider dies mid-stream: the stream ends with the dialect's in-band error (Anthropic `event: error`, Responses
  `error` or `response.failed`), never its clean end; row upstream_cut, billed for what was relayed;
- the client leaves mid-stream: the upstream is closed, row client_gone, billed for what was relayed.
Live (PostgreSQL and Redis, which keep running; outages through the test's TCP proxy):
- a serving process killed mid-stream: the survivor replays its journal, one gateway_lost row per stream;
- PostgreSQL away: every request is served and its row written once it is back;
- Redis away: budgeted requests get the dialect's 503 (retryable), row gateway_unavailable; counters equal the ledger.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.db.models import Sum

from bench import mock_upstream
from billing import budgets, keyspace
from billing.models import Budget, Price, UsageRecord
from proxy import routing
from proxy.models import Provider

from ..conftest import Party, make_party
from ..dialects.dialect_checks import (
    ANTHROPIC_TYPE_OF, MESSAGES, RESPONSES, URLS, assert_complete_stream, assert_error, assert_failed_stream, body_for, exchange,
    rows_when_written,
)
from ..dialects.native_upstream import native_seen, native_upstream
from ..factories import make_route
from ..live import serve_app, tollgate_process, tollgate_server
from .tcp_proxy import FaultProxy

OUTAGE = 3.0
LEASE = 8
STREAMS = 10  # per dialect
@pytest.fixture
def routed(alice: Party, mock_upstream_url: str) -> Iterator[Party]:
    if os.environ.get("REDIS_URL"):
        import redis

        redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    with serve_app(native_upstream) as native_url:
        Provider.objects.create(name="native-openai", kind="openai_compatible", preset="openai",
                                base_url=f"{native_url}/v1")
        for model in ("mock-503", "mock-cut", "mock-long"):
            make_route(model, upstream_model=model, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
        for mode in ("fail", "cut", "long", "oops"):
            make_route(f"claude-{mode}", upstream_model=f"claude-{mode}", base_url=native_url, kind="anthropic",
                       provider_name="native-anthropic")
            make_route(f"gpt-{mode}", upstream_model=f"gpt-{mode}", provider_name="native-openai")
        routing.invalidate()
        for route in ("mock-503", "mock-cut", "mock-long", *(f"{p}-{m}" for p in ("claude", "gpt") for m in ("fail", "cut", "long", "oops"))):
            Price.objects.create(model=route, input_per_million=Decimal("1"), output_per_million=Decimal("2"))
        Budget.objects.create(tenant=alice.tenant, amount=Decimal("100"), period="month")
        yield alice


def model_for(endpoint: str, route: str, mode: str) -> str:
    """The model that fails this way: the chat mock (translated) or the native upstream of the dialect."""
    if route == "translated":
        return {"fail": "mock-503", "cut": "mock-cut", "long": "mock-long"}[mode]
    return f"{'claude' if endpoint == MESSAGES else 'gpt'}-{mode}"


def send(party: Party, endpoint: str, model: str, stream: bool, **client: Any) -> tuple[Any, list[UsageRecord]]:
    async def run() -> tuple[Any, list[UsageRecord]]:
        body = json.dumps(body_for(endpoint, model, stream=stream, tokens=1000)).encode()
        reply = await exchange(URLS[endpoint], body, party.auth, **client)
        return reply, await rows_when_written(party.tenant.pk, 1)

    return async_to_sync(run)()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("route", ["translated", "native"])
@pytest.mark.parametrize("endpoint", [MESSAGES, RESPONSES])
def test_a_provider_failing_before_the_first_byte_after_retries_leaves_one_row(
    routed: Party, endpoint: str, route: str, stream: bool
) -> None:
    model = model_for(endpoint, route, "fail")
    attempts = len(mock_upstream.peers) + native_seen.count(f"request {model}")
    reply, rows = send(routed, endpoint, model, stream)
    assert len(mock_upstream.peers) + native_seen.count(f"request {model}") - attempts >= 2  # it was retried
    assert_error(endpoint, reply.status, reply.headers, reply.content)
    assert reply.status >= 502
    assert len(rows) == 1
    row = rows[0]
    assert (row.endpoint, row.end_reason, row.status_code, row.cost_picos) == (endpoint, "upstream_error", reply.status, 0)
    assert row.request_id.hex == reply.headers["x-request-id"]


@pytest.mark.parametrize(("route", "mode"), [("translated", "cut"), ("native", "cut"), ("native", "oops")],
                         ids=["translated-cut", "native-cut", "native-error-event"])
@pytest.mark.parametrize("endpoint", [MESSAGES, RESPONSES])
def test_a_provider_dying_mid_stream_ends_in_the_dialects_error_event_and_leaves_one_row(
    routed: Party, endpoint: str, route: str, mode: str
) -> None:
    reply, rows = send(routed, endpoint, model_for(endpoint, route, mode), True)
    assert reply.status == 200
    error = assert_failed_stream(endpoint, reply.content)
    assert len(rows) == 1
    row = rows[0]
    if mode == "cut":
        assert (row.endpoint, row.end_reason, row.status_code) == (endpoint, "upstream_cut", 502)
    else:  # the provider's own error: its status (Anthropic's overloaded is 529), told in-band as the same error
        assert (row.endpoint, row.end_reason) == (endpoint, "upstream_error") and row.status_code in (502, 503, 529)
        if endpoint == MESSAGES and row.status_code in ANTHROPIC_TYPE_OF:
            assert error["type"] == ANTHROPIC_TYPE_OF[row.status_code]
    assert row.completion_tokens > 0 and row.cost_picos > 0  # what reached the client is billed


@pytest.mark.parametrize("route", ["translated", "native"])
@pytest.mark.parametrize("endpoint", [MESSAGES, RESPONSES])
def test_a_client_leaving_mid_stream_closes_the_upstream_and_leaves_one_row(
    routed: Party, endpoint: str, route: str
) -> None:
    model = model_for(endpoint, route, "long")
    mock_upstream.events.clear()
    reply, rows = send(routed, endpoint, model, True, leave_after_events=8)
    assert reply.status == 200
    assert len(rows) == 1
    row = rows[0]
    assert (row.endpoint, row.end_reason, row.status_code) == (endpoint, "client_gone", 499)
    assert row.completion_tokens > 0 and row.cost_picos > 0
    deadline = time.monotonic() + 5  # the upstream is closed, not left running for the rest of its answer
    while time.monotonic() < deadline and not (
            f"disconnect {model}" in native_seen or any(e["model"] == model for e in mock_upstream.events)):
        time.sleep(0.05)
    assert f"disconnect {model}" in native_seen or any(e["model"] == model for e in mock_upstream.events)


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


@pytest.fixture
def parties(transactional_db: None, mock_upstream_url: str) -> tuple[Party, Party]:
    """alice has a budget (so the gate needs Redis) and a limit on requests in flight; bob has neither."""
    redis_client().flushdb()
    alice, bob = make_party("alice"), make_party("bob")
    alice.key.max_concurrent = 100
    alice.key.save()
    for model in ("mock", "mock-long", "mock-slow"):
        make_route(model, upstream_model=model, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
        Price.objects.create(model=model, input_per_million=Decimal("100"), output_per_million=Decimal("200"))
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1000"), period="month")
    return alice, bob


def wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.1)


def money_matches(party: Party) -> None:
    """The budget's running total equals the ledger to the pico-dollar; no hold, lease or slot is left."""
    budget = Budget.objects.get(tenant=party.tenant)
    client = redis_client()
    slots = keyspace.rate(party.tenant.pk, "key", party.key.prefix) + ":c"
    wait_for(lambda: budgets.status(budget).reserved_micros == 0 and client.zcard(keyspace.leases(party.tenant.pk)) == 0
             and client.zcard(slots) == 0, 2 * LEASE)
    ledger = UsageRecord.objects.filter(tenant=party.tenant).aggregate(total=Sum("cost_picos"))["total"] or 0
    assert budgets.status(budget).spent_picos == ledger


SHAPES = [(MESSAGES, False), (MESSAGES, True), (RESPONSES, False), (RESPONSES, True)]


async def load(url: str, parties: list[Party], seconds: float, during: Any = None) -> list[httpx.Response]:
    """Four clients per party send every dialect and shape in turn for ``seconds``; ``during`` runs alongside."""
    answers: list[httpx.Response] = []
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30) as http:

        async def client(party: Party, turn: int) -> None:
            while time.monotonic() < stop:
                endpoint, stream = SHAPES[turn % len(SHAPES)]
                turn += 1
                answers.append(await http.post(f"{url}{URLS[endpoint]}", headers=party.auth,
                                               json=body_for(endpoint, "mock", stream=stream)))

        work = [client(p, i) for p in parties for i in range(4)]
        await asyncio.gather(*work, *([during] if during is not None else []))
    return answers


def endpoint_of(answer: httpx.Response) -> str:
    return MESSAGES if answer.request.url.path == URLS[MESSAGES] else RESPONSES


def assert_served(answer: httpx.Response) -> None:
    assert answer.status_code == 200, answer.text[:300]
    if answer.headers["content-type"].startswith("text/event-stream"):
        assert_complete_stream(endpoint_of(answer), answer.content)


@pytest.mark.django_db(transaction=True)
@pytest.mark.needs_postgres
@pytest.mark.needs_redis
def test_a_server_killed_mid_stream_leaves_one_row_per_stream_and_heals(parties: tuple[Party, Party], tmp_path: Path) -> None:
    alice, _ = parties
    name = connection.settings_dict["NAME"]
    env = {"TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_RESERVATION_LEASE_SECONDS": str(LEASE)}
    # Translated to the chat mock, and relayed natively (Anthropic Messages, OpenAI Responses).
    kinds = [(MESSAGES, "mock-long"), (RESPONSES, "mock-long"), (MESSAGES, "claude-long"), (RESPONSES, "gpt-long")]
    with serve_app(native_upstream) as native_url, tollgate_server(name, tmp_path / "survivor.log", **env) as survivor:
        Provider.objects.create(name="native-openai", kind="openai_compatible", preset="openai", base_url=f"{native_url}/v1")
        make_route("claude-long", upstream_model="claude-long", base_url=native_url, kind="anthropic",
                   provider_name="native-anthropic")
        make_route("gpt-long", upstream_model="gpt-long", provider_name="native-openai")
        for model in ("claude-long", "gpt-long"):
            Price.objects.create(model=model, input_per_million=Decimal("100"), output_per_million=Decimal("200"))
        with tollgate_process(name, tmp_path / "victim.log", **env) as (victim, process):

            async def scenario() -> list[int]:
                started, counted = asyncio.Event(), [0]
                http = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100))

                async def read(endpoint: str, model: str) -> int:
                    events = 0
                    try:
                        async with http.stream("POST", f"{victim}{URLS[endpoint]}", headers=alice.auth,
                                               json=body_for(endpoint, model, stream=True, tokens=1000)) as r:
                            async for line in r.aiter_lines():
                                events += line.startswith("data:")
                                if events == 5:
                                    counted[0] += 1
                                    if counted[0] == 2 * STREAMS:
                                        started.set()
                    except httpx.HTTPError:
                        pass
                    return events

                tasks = [asyncio.ensure_future(read(*kinds[i % 4])) for i in range(2 * STREAMS)]
                await asyncio.wait_for(started.wait(), 30)
                await asyncio.sleep(1.5)  # past a journal checkpoint: what was relayed is on disk
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
                events = await asyncio.gather(*tasks)
                await http.aclose()
                return events

            assert all(e >= 5 for e in asyncio.run(scenario()))
        rows = UsageRecord.objects.filter(tenant=alice.tenant)
        httpx.get(f"{survivor}/v1/models", headers=alice.auth, timeout=10)
        wait_for(lambda: rows.count() >= 2 * STREAMS, 30)
        assert rows.count() == 2 * STREAMS
        assert sorted(rows.values_list("endpoint", flat=True)) == [MESSAGES] * STREAMS + [RESPONSES] * STREAMS
        assert set(rows.values_list("end_reason", flat=True)) == {"gateway_lost"}
        assert sorted(rows.values_list("public_model", flat=True)) == sorted(kinds[i % 4][1] for i in range(2 * STREAMS))
        assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 and r.cost_picos > 0 for r in rows)
        money_matches(alice)


@pytest.mark.django_db(transaction=True)
@pytest.mark.needs_postgres
@pytest.mark.needs_redis
def test_a_database_outage_during_dialect_requests_loses_no_row(parties: tuple[Party, Party], tmp_path: Path) -> None:
    alice, bob = parties
    database = connection.settings_dict
    with FaultProxy(int(database["PORT"] or 5432)) as proxy:
        env = {"DATABASE_URL": f"postgres://{database['USER']}@127.0.0.1:{proxy.port}/{database['NAME']}",
               "TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_ROUTES_CACHE_SECONDS": "60",
               "TOLLGATE_KEY_CACHE_SECONDS": "120"}
        with tollgate_server(database["NAME"], tmp_path / "server.log", **env) as url:
            first = httpx.post(f"{url}{URLS[RESPONSES]}", headers=alice.auth, json=body_for(RESPONSES, "mock"), timeout=10)
            stored = first.json()["id"]

            async def outage() -> None:
                await asyncio.sleep(0.5)
                proxy.cut()
                await asyncio.sleep(OUTAGE)
                proxy.restore()

            async def probe() -> list[httpx.Response]:
                # What needs the database cannot be served while it is away: a stored response, a conversation.
                async with httpx.AsyncClient(timeout=30) as http:
                    return [await http.get(f"{url}/v1/responses/{stored}", headers=alice.auth),
                            await http.post(f"{url}{URLS[RESPONSES]}", headers=alice.auth, json=body_for(
                                RESPONSES, "mock", previous_response_id=stored))]

            answers = asyncio.run(load(url, [alice, bob], 0.5))  # warm the key cache, routes, prices, budgets
            answers += asyncio.run(load(url, [alice, bob], OUTAGE + 1.5, outage()))
            wait_for(lambda: UsageRecord.objects.count() >= len(answers) + 1, 30)  # the spool is written
            proxy.cut()
            started = time.monotonic()
            probes = asyncio.run(probe())
            took = time.monotonic() - started
            proxy.restore()
            for answer in answers:
                assert_served(answer)
            wait_for(lambda: UsageRecord.objects.count() >= len(answers) + 2, 30)
    assert took < 10, took  # each refused within the database pool's wait, not held for the outage
    for probe in probes:
        error = assert_error(RESPONSES, probe.status_code, probe.headers, probe.content, 503)
        assert error["code"] == "service_unavailable" and probe.headers["x-should-retry"] == "true"
    refused = UsageRecord.objects.get(request_id=probes[1].headers["x-request-id"])
    assert (refused.endpoint, refused.end_reason, refused.status_code) == (RESPONSES, "gateway_unavailable", 503)
    ids = [a.headers["x-request-id"] for a in answers]
    assert len(set(ids)) == len(ids)
    assert UsageRecord.objects.filter(request_id__in=ids).count() == len(answers)
    assert UsageRecord.objects.count() == len(answers) + 2  # and the first response, and the refused follow-up
    for answer in answers:
        assert UsageRecord.objects.get(request_id=answer.headers["x-request-id"]).endpoint == endpoint_of(answer)
    money_matches(alice)


@pytest.mark.django_db(transaction=True)
@pytest.mark.needs_postgres
@pytest.mark.needs_redis
def test_a_redis_outage_answers_the_dialects_503_and_counters_equal_the_ledger(
    parties: tuple[Party, Party], tmp_path: Path
) -> None:
    alice, bob = parties
    redis_url = urlsplit(os.environ["REDIS_URL"])
    with FaultProxy(redis_url.port or 6379) as proxy:
        env = {"REDIS_URL": f"redis://127.0.0.1:{proxy.port}{redis_url.path}",
               "TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_RESERVATION_LEASE_SECONDS": str(LEASE)}
        with tollgate_server(connection.settings_dict["NAME"], tmp_path / "server.log", **env) as url:
            before = asyncio.run(load(url, [alice, bob], 0.5))

            async def cut_under_streams() -> tuple[list[httpx.Response], list[httpx.Response]]:
                # Streams admitted just before the cut end during it: their holds are settled once Redis is back.
                async with httpx.AsyncClient(timeout=30) as http:
                    streams = [asyncio.ensure_future(http.post(f"{url}{URLS[e]}", headers=alice.auth,
                                                               json=body_for(e, "mock-slow", stream=True)))
                               for e in (MESSAGES, RESPONSES) for _ in range(3)]
                    await asyncio.sleep(0.3)
                    proxy.cut()
                    during = await load(url, [alice, bob], OUTAGE)
                    return during, list(await asyncio.gather(*streams))

            during, streamed = asyncio.run(cut_under_streams())
            proxy.restore()
            time.sleep(1.5)
            after = asyncio.run(load(url, [alice, bob], 0.5))
    refused = [a for a in during if a.request.headers["Authorization"] == alice.auth["Authorization"]]
    served = [a for a in during if a not in refused]
    for answer in before + served + after + streamed:
        assert_served(answer)
    assert refused and served
    for answer in refused:
        error = assert_error(endpoint_of(answer), answer.status_code, answer.headers, answer.content, 503)
        assert answer.headers["x-should-retry"] == "true"
        if endpoint_of(answer) == RESPONSES:
            assert error["code"] == "service_unavailable"
    everything = before + during + after + streamed
    wait_for(lambda: UsageRecord.objects.count() >= len(everything), 15)
    assert UsageRecord.objects.count() == len(everything)
    lost = UsageRecord.objects.filter(tenant=alice.tenant, end_reason="gateway_unavailable")
    assert sorted(r.request_id.hex for r in lost) == sorted(a.headers["x-request-id"] for a in refused)
    assert set(lost.values_list("status_code", flat=True)) == {503}
    money_matches(alice)

