"""The response cache on /v1: identical requests answered again without the provider, each with its own ledger row."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.db.models import Sum
from django.test import override_settings

from accounts.models import ApiKey
from billing import budgets
from billing.models import Budget, Price, UsageRecord
from proxy import response_cache, routing, upstream
from proxy.models import ModelRoute
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..factories import make_route
from .v1_client import CHAT, COMPLETIONS, EMBEDDINGS, HELLO, AsgiReply, asgi, json_headers

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    # Entries of earlier tests (their tenants' ids may come again on SQLite) must not answer in this one.
    response_cache.forget()
    if settings.TOLLGATE_CACHE_REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.TOLLGATE_CACHE_REDIS_URL)
        for key in client.scan_iter(f"{response_cache.PREFIX}*"):
            client.delete(key)
        client.close()
    routing.invalidate()
    yield
    routing.invalidate()


@pytest.fixture
def demo(db: None) -> ModelRoute:
    route = ensure_demo_route()
    ModelRoute.objects.filter(pk=route.pk).update(cache_enabled=True)
    routing.invalidate()
    return route


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every time a provider is asked, by kind."""
    seen: list[str] = []
    complete, open_stream = upstream.complete, upstream.open_stream

    async def counted_complete(target: Any, body: Any) -> Any:
        seen.append("complete")
        return await complete(target, body)

    async def counted_stream(target: Any, body: Any) -> Any:
        seen.append("stream")
        return await open_stream(target, body)

    monkeypatch.setattr(upstream, "complete", counted_complete)
    monkeypatch.setattr(upstream, "open_stream", counted_stream)
    return seen


def configure(route: ModelRoute, **fields: Any) -> None:
    ModelRoute.objects.filter(pk=route.pk).update(**fields)
    routing.invalidate()


def send(party: Party, body: dict[str, Any] | str, path: str = CHAT, **headers: str) -> AsgiReply:
    raw = (body if isinstance(body, str) else json.dumps(body)).encode()
    return asgi(path, chunks=[raw], headers=json_headers(party, raw, **headers))


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "demo", "messages": HELLO, **fields}


def events(reply: AsgiReply) -> list[dict[str, Any]]:
    frames = [frame for frame in reply.content.split(b"\n\n") if frame]
    assert frames[-1] == b"data: [DONE]", frames[-1]
    return [json.loads(frame[6:]) for frame in frames[:-1]]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def rows(party: Party) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(tenant=party.tenant).order_by("created_at", "id"))


def test_a_repeated_request_is_answered_from_the_cache_without_the_provider(
        alice: Party, demo: ModelRoute, calls: list[str]) -> None:
    first, second = send(alice, chat()), send(alice, chat())
    assert (first.status, first["x-tollgate-cache"]) == (200, "miss")
    assert (second.status, second["x-tollgate-cache"]) == (200, "hit")
    assert second.json() == first.json() and calls == ["complete"]
    assert second["x-request-id"] != first["x-request-id"]


def test_the_same_body_with_its_keys_in_another_order_is_a_hit(alice: Party, demo: ModelRoute, calls: list[str]) -> None:
    send(alice, '{"model": "demo", "temperature": 0, "messages": [{"role": "user", "content": "Say hello"}]}')
    reply = send(alice, '{"messages":[{"content":"Say hello","role":"user"}],"temperature":0,"model":"demo"}')
    assert reply["x-tollgate-cache"] == "hit" and calls == ["complete"]
    assert send(alice, chat(temperature=0.5))["x-tollgate-cache"] == "miss"  # another request: another entry


def test_bob_never_gets_alices_cached_answer_unless_the_route_is_shared(
        alice: Party, bob: Party, demo: ModelRoute, calls: list[str]) -> None:
    send(alice, chat())
    assert send(bob, chat())["x-tollgate-cache"] == "miss" and calls == ["complete", "complete"]
    configure(demo, cache_shared=True)
    send(alice, chat(max_tokens=3))
    assert send(bob, chat(max_tokens=3))["x-tollgate-cache"] == "hit" and len(calls) == 3


def test_a_streamed_hit_replays_the_answer_as_a_live_stream_does(alice: Party, demo: ModelRoute, calls: list[str]) -> None:
    live = send(alice, chat(stream=True, stream_options={"include_usage": True}))
    replayed = send(alice, chat(stream=True, stream_options={"include_usage": True}))
    assert (live["x-tollgate-cache"], replayed["x-tollgate-cache"], calls) == ("miss", "hit", ["stream"])
    assert replayed["content-type"].startswith("text/event-stream") and replayed["cache-control"] == "no-cache"
    before, after = events(live), events(replayed)
    for chunks in (before, after):
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert chunks[-2]["choices"][0]["delta"] == {} and chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and set(chunks[-1]["usage"]) >= {"prompt_tokens", "completion_tokens"}
    assert streamed_text(after) == streamed_text(before) and after[-1]["usage"] == before[-1]["usage"]
    # Without include_usage, no usage chunk, as live.
    plain = events(send(alice, chat(stream=True)))
    assert all(c["choices"] for c in plain) and streamed_text(plain) == streamed_text(before) and len(calls) == 1


def test_a_streamed_and_a_plain_request_share_one_entry(alice: Party, demo: ModelRoute, calls: list[str]) -> None:
    answer = send(alice, chat()).json()
    assert streamed_text(events(send(alice, chat(stream=True)))) == answer["choices"][0]["message"]["content"]
    streamed = events(send(alice, chat(max_tokens=4, stream=True)))
    whole = send(alice, chat(max_tokens=4))
    assert whole["x-tollgate-cache"] == "hit" and calls == ["complete", "stream"]
    assert whole.json()["choices"][0]["message"] == {"role": "assistant", "content": streamed_text(streamed)}
    assert whole.json()["choices"][0]["finish_reason"] == "length" and whole.json()["usage"]["completion_tokens"] == 4


def test_legacy_completions_and_embeddings_are_cached_too(alice: Party, demo: ModelRoute, calls: list[str]) -> None:
    prompt = {"model": "demo", "prompt": "Say hello"}
    text = send(alice, prompt, COMPLETIONS).json()["choices"][0]["text"]
    chunks = events(send(alice, {**prompt, "stream": True}, COMPLETIONS))
    assert {c["object"] for c in chunks} == {"text_completion"} and "".join(c["choices"][0]["text"] for c in chunks) == text
    vectors = send(alice, {"model": "demo", "input": ["a", "b"]}, EMBEDDINGS)
    again = send(alice, {"model": "demo", "input": ["a", "b"]}, EMBEDDINGS)
    assert again["x-tollgate-cache"] == "hit" and again.json() == vectors.json()
    assert calls == ["complete", "complete"]


def test_cache_control_no_cache_skips_the_lookup_and_no_store_keeps_nothing(
        alice: Party, demo: ModelRoute, calls: list[str]) -> None:
    assert send(alice, chat(), **{"Cache-Control": "no-store"})["x-tollgate-cache"] == "miss"
    assert send(alice, chat(), **{"Cache-Control": "no-cache"})["x-tollgate-cache"] == "miss"  # and kept
    assert send(alice, chat())["x-tollgate-cache"] == "hit" and len(calls) == 2


def test_errors_are_never_cached(alice: Party, mock_upstream_url: str, calls: list[str]) -> None:
    make_route("mock-500", upstream_model="mock-500", base_url=f"{mock_upstream_url}/v1", provider_name="mock",
               cache_enabled=True)
    routing.invalidate()
    body = {"model": "mock-500", "messages": HELLO}
    first = send(alice, body)
    asked = len(calls)
    second = send(alice, body)
    assert first.status >= 500 and second.status >= 500
    assert second["x-tollgate-cache"] == "miss" and len(calls) > asked > 0  # asked again


def test_several_sampled_answers_are_not_cached_unless_the_route_says_so(
        alice: Party, demo: ModelRoute, calls: list[str]) -> None:
    for _ in range(2):
        assert send(alice, chat(n=2))["x-tollgate-cache"] == "miss"  # no temperature: OpenAI's default is 1
        assert send(alice, chat(n=2, temperature=0.7))["x-tollgate-cache"] == "miss"
    send(alice, chat(n=2, temperature=0))
    assert send(alice, chat(n=2, temperature=0))["x-tollgate-cache"] == "hit" and len(calls) == 5
    configure(demo, cache_sampled=True)
    assert send(alice, chat(n=2, temperature=0.7))["x-tollgate-cache"] == "miss"
    assert send(alice, chat(n=2, temperature=0.7))["x-tollgate-cache"] == "hit"
    for _ in range(2):  # log probabilities are never cached
        assert send(alice, chat(temperature=0, logprobs=True))["x-tollgate-cache"] == "miss"


def test_a_request_with_a_user_is_not_cached_when_the_route_is_per_user(
        alice: Party, demo: ModelRoute, calls: list[str]) -> None:
    send(alice, chat(user="u1"))
    assert send(alice, chat(user="u1"))["x-tollgate-cache"] == "hit"
    configure(demo, cache_per_user=True)
    send(alice, chat(user="u2"))
    assert send(alice, chat(user="u2"))["x-tollgate-cache"] == "miss" and len(calls) == 3


def test_a_key_opts_in_on_any_route_or_out_of_a_cached_one(alice: Party, demo: ModelRoute, calls: list[str]) -> None:
    configure(demo, cache_enabled=False)
    assert send(alice, chat())["x-tollgate-cache"] == "miss" and calls == ["complete"]  # nothing configured: no lookup
    ApiKey.objects.filter(pk=alice.key.pk).update(response_cache="on")
    alice.key.refresh_from_db()
    from accounts import keys

    keys.forget(alice.key.prefix)
    send(alice, chat())
    assert send(alice, chat())["x-tollgate-cache"] == "hit" and len(calls) == 2
    configure(demo, cache_enabled=True)
    ApiKey.objects.filter(pk=alice.key.pk).update(response_cache="off")
    keys.forget(alice.key.prefix)
    assert send(alice, chat())["x-tollgate-cache"] == "miss" and len(calls) == 3


def test_the_plain_path_never_consults_the_cache(alice: Party, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_demo_route()
    routing.invalidate()

    def refuse(*args: Any) -> None:
        raise AssertionError("consulted")

    monkeypatch.setattr(response_cache, "consult", refuse)
    monkeypatch.setattr(response_cache, "entry_key", refuse)
    whole, streamed = send(alice, chat()), send(alice, chat(stream=True))
    assert whole.status == 200 and streamed.status == 200
    # Every answer says whether it came from the cache, on routes without one too.
    assert whole["x-tollgate-cache"] == "miss" and streamed["x-tollgate-cache"] == "miss"


@override_settings(TOLLGATE_CACHE_REDIS_URL=None)
def test_an_entry_expires_after_the_routes_ttl(alice: Party, demo: ModelRoute, calls: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    configure(demo, cache_ttl_seconds=60)
    send(alice, chat())
    clock = response_cache.time.monotonic
    monkeypatch.setattr(response_cache.time, "monotonic", lambda: clock() + 59)
    assert send(alice, chat())["x-tollgate-cache"] == "hit"
    monkeypatch.setattr(response_cache.time, "monotonic", lambda: clock() + 61)
    assert send(alice, chat())["x-tollgate-cache"] == "miss" and len(calls) == 2


@pytest.mark.needs_redis
def test_a_redis_entry_lives_for_the_routes_ttl(alice: Party, demo: ModelRoute) -> None:
    import redis

    configure(demo, cache_ttl_seconds=90)
    send(alice, chat())
    client = redis.Redis.from_url(settings.TOLLGATE_CACHE_REDIS_URL)
    [key] = list(client.scan_iter(f"{response_cache.PREFIX}*"))
    assert 85 <= client.ttl(key) <= 90
    client.close()


@pytest.fixture
def demo_price(db: None) -> Price:
    return Price.objects.create(model="demo", input_per_million=Decimal("1000"), output_per_million=Decimal("2000"))


def test_a_hit_leaves_one_row_from_the_cache_free_or_at_full_price(
        alice: Party, demo: ModelRoute, demo_price: Price) -> None:
    send(alice, chat())
    hit = send(alice, chat(stream=True))
    miss_row, hit_row = rows(alice)
    assert hit_row.request_id.hex == hit["x-request-id"]
    assert (hit_row.usage_source, hit_row.end_reason, hit_row.status_code, hit_row.stream) == ("cache", "complete", 200, True)
    assert (hit_row.prompt_tokens, hit_row.completion_tokens) == (miss_row.prompt_tokens, miss_row.completion_tokens)
    assert miss_row.usage_source == "provider" and miss_row.cost_picos > 0 and hit_row.cost_picos == 0
    configure(demo, cache_cost="full")
    send(alice, chat())
    full = rows(alice)[-1]
    assert (full.usage_source, full.cost_picos, full.price_id) == ("cache", miss_row.cost_picos, demo_price.pk)


def test_a_hit_counts_for_rate_limits(alice: Party, demo: ModelRoute, calls: list[str]) -> None:
    ApiKey.objects.filter(pk=alice.key.pk).update(requests_per_minute=2)
    first, second, third = (send(alice, chat()) for _ in range(3))
    assert (first["x-tollgate-cache"], second["x-tollgate-cache"]) == ("miss", "hit")
    assert second["x-ratelimit-remaining-requests"] == "0"
    assert third.status == 429 and third["x-tollgate-cache"] == "miss" and calls == ["complete"]
    assert [r.end_reason for r in rows(alice)] == ["complete", "complete", "rejected"]


def test_budget_counters_equal_the_ledger_after_hits(alice: Party, demo: ModelRoute, demo_price: Price) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, key=alice.key, amount=Decimal("5.00"), period="day")
    for _ in range(3):
        send(alice, chat(max_tokens=5))
        send(alice, chat(max_tokens=6, stream=True))
    configure(demo, cache_cost="full")
    for _ in range(2):
        assert send(alice, chat(max_tokens=5, stream=True))["x-tollgate-cache"] == "hit"
    ledger = UsageRecord.objects.filter(tenant=alice.tenant)
    assert ledger.count() == 8 and ledger.filter(usage_source="cache", status_code=200).count() == 6
    assert ledger.filter(usage_source="cache", cost_picos__gt=0).count() == 2
    state = budgets.status(budget)
    assert (state.spent_picos, state.reserved_micros) == (ledger.aggregate(total=Sum("cost_picos"))["total"], 0)


@override_settings(TOLLGATE_CACHE_REDIS_URL="redis://127.0.0.1:9/0")
def test_a_cache_that_is_down_is_a_miss_never_an_error(alice: Party, demo: ModelRoute, calls: list[str]) -> None:
    for body in (chat(), chat(), chat(stream=True)):
        reply = send(alice, body)
        assert (reply.status, reply["x-tollgate-cache"]) == (200, "miss")
    assert len(calls) == 3


@pytest.mark.django_db(transaction=True)  # the server process must see committed rows
def test_the_openai_sdk_reads_a_cached_stream_as_it_reads_a_live_one(live_server_url: str) -> None:
    from openai import OpenAI

    from ..conftest import make_party

    alice = make_party("alice")
    route = ensure_demo_route()
    ModelRoute.objects.filter(pk=route.pk).update(cache_enabled=True)
    client = OpenAI(base_url=f"{live_server_url}/v1", api_key=alice.secret, max_retries=0)

    def stream() -> tuple[str, list[Any]]:
        raw = client.chat.completions.with_raw_response.create(
            model="demo", messages=HELLO, stream=True, stream_options={"include_usage": True})
        return raw.headers["x-tollgate-cache"], list(raw.parse())

    live_state, live = stream()
    assert live_state == "miss"
    # The entry is kept just after the stream ends, so a request sent at once may still miss it: ask again.
    misses, deadline = 0, time.monotonic() + 3
    while (answer := stream())[0] != "hit" and time.monotonic() < deadline:
        misses += 1
        time.sleep(0.05)
    cached_state, cached = answer
    assert cached_state == "hit"
    for chunks in (live, cached):
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].choices == []
    text = "".join(c.choices[0].delta.content or "" for c in live if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in cached if c.choices) == text and text
    assert cached[-1].usage == live[-1].usage and cached[-1].id == cached[0].id
    whole = client.chat.completions.with_raw_response.create(model="demo", messages=HELLO)
    assert whole.headers["x-tollgate-cache"] == "hit" and whole.parse().choices[0].message.content == text
    deadline = time.monotonic() + 3
    while UsageRecord.objects.filter(tenant=alice.tenant).count() < 3 + misses and time.monotonic() < deadline:
        time.sleep(0.02)
    sources = sorted(UsageRecord.objects.filter(tenant=alice.tenant).values_list("usage_source", flat=True))
    assert sources == ["cache", "cache"] + ["provider"] * (1 + misses)


@override_settings(TOLLGATE_CACHE_REDIS_URL=None)
def test_a_stream_the_client_leaves_closes_its_relay_and_is_not_kept() -> None:
    from asgiref.sync import async_to_sync

    from proxy.metering import Meter
    from proxy.providers.base import CachePolicy

    closed: list[bool] = []

    async def relayed() -> Any:
        try:
            yield b'data: {"choices": []}\n\n'
            yield b"data: [DONE]\n\n"
        finally:
            closed.append(True)

    meter = Meter("chat")
    meter.cache = response_cache.Ask(CachePolicy(enabled=True), key=f"{response_cache.PREFIX}left")

    async def leave_after_one_frame() -> bytes | None:
        recording = response_cache.recording(relayed(), meter)
        await recording.__anext__()
        await recording.aclose()  # what Django does when the client goes away
        return await response_cache.store().get(f"{response_cache.PREFIX}left")

    assert async_to_sync(leave_after_one_frame)() is None and closed == [True]


def test_an_operator_sets_a_keys_response_cache_in_the_admin(admin_client: Any, alice: Party) -> None:
    page = admin_client.get(f"/admin/accounts/apikey/{alice.key.pk}/change/").content.decode()
    assert 'name="response_cache"' in page
    form = {"name": alice.key.name, "allowed_models": "", "expires_at_0": "", "expires_at_1": "",
            "response_cache": "on", "budgets-TOTAL_FORMS": "0", "budgets-INITIAL_FORMS": "0"}
    assert admin_client.post(f"/admin/accounts/apikey/{alice.key.pk}/change/", form).status_code == 302
    alice.key.refresh_from_db()
    assert alice.key.response_cache == "on"


def test_an_http_providers_stream_is_kept_and_served_to_both_kinds_of_request(
        alice: Party, mock_upstream_url: str, calls: list[str]) -> None:
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock", cache_enabled=True)
    routing.invalidate()
    body = {"model": "mock", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    live, replayed = events(send(alice, body)), events(send(alice, body))
    whole = send(alice, {"model": "mock", "messages": HELLO})
    assert whole["x-tollgate-cache"] == "hit" and calls == ["stream"]
    text = streamed_text(live)
    assert streamed_text(replayed) == text and whole.json()["choices"][0]["message"]["content"] == text
    assert replayed[-1]["usage"] == live[-1]["usage"]
    assert whole.json()["usage"]["completion_tokens"] == live[-1]["usage"]["completion_tokens"]
    assert [r.usage_source for r in rows(alice)] == ["provider", "cache", "cache"]
