"""The overspend bound on the Messages and Responses APIs: 200 concurrent requests, whole and streamed, over two server
processes sharing Redis, against a small hard budget on the tenant or on the key, to the demo model and through the
mock upstream (translated to chat, and as Anthropic messages).

As on /v1 chat (README, "Prices, budgets and rate limits"): the ledger never passes a hard budget by more than one
request's estimate error plus TOLLGATE_BUDGET_OVERDRAFT_USD (0 here), and the mocks never use more than the worst
case held, so never past the budget at all. Every request has exactly one row (refused ones `rejected`, 429, as chat
writes them), the budget's running total equals the ledger to the pico-dollar, and no hold, lease or slot stays open.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.db import connection
from django.db.models import Sum

from billing import budgets, keyspace
from billing.models import Budget, Price, UsageRecord
from proxy.models import Provider
from proxy.services import ensure_demo_route

from ..conftest import Party, make_party
from ..dialects.dialect_checks import MESSAGES, RESPONSES, URLS, assert_complete_stream, assert_error, body_for
from ..dialects.native_upstream import native_upstream
from ..factories import make_route
from ..live import serve_app, tollgate_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.needs_postgres, pytest.mark.needs_redis]

REQUESTS = 200
# Built in; the OpenAI-compatible mock (translated); the Anthropic kind on the same mock (native for Messages,
# translated for Responses); and a provider that speaks Responses natively.
MODELS = ("demo", "mock", "claude-mock", "gpt-ok")
CASES = [(endpoint, model) for endpoint in (MESSAGES, RESPONSES) for model in MODELS[:3]] + [(RESPONSES, "gpt-ok")]


def redis_client() -> object:
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


@pytest.fixture(scope="module")
def servers(django_db_setup: None, mock_upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    logs: Path = tmp_path_factory.mktemp("dialect-races")
    name = connection.settings_dict["NAME"]
    env = {"TOLLGATE_JOURNAL_DIR": str(logs / "journal")}
    with tollgate_server(name, logs / "one.log", **env) as one, tollgate_server(name, logs / "two.log", **env) as two:
        yield one, two


@pytest.fixture(scope="module")
def native_url() -> Iterator[str]:
    with serve_app(native_upstream) as url:
        yield url


@pytest.fixture
def alice(transactional_db: None, mock_upstream_url: str, native_url: str) -> Party:
    redis_client().flushdb()  # type: ignore[attr-defined]
    party = make_party("alice")
    party.key.max_concurrent = 1000  # never limiting, but every admitted request takes a slot that must come back
    party.key.save()
    ensure_demo_route()
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    make_route("claude-mock", upstream_model="claude-mock", base_url=mock_upstream_url, kind="anthropic",
               provider_name="mock-anthropic")
    Provider.objects.create(name="native-openai", kind="openai_compatible", preset="openai", base_url=f"{native_url}/v1")
    make_route("gpt-ok", upstream_model="gpt-ok", provider_name="native-openai")
    for counted in (44, 66):
        make_route(f"claude-over-{counted}", upstream_model=f"claude-over-{counted}", base_url=native_url,
                   kind="anthropic", provider_name="native-anthropic")
    for model in (*MODELS, "claude-over-44", "claude-over-66"):
        Price.objects.create(model=model, input_per_million=Decimal("100"), output_per_million=Decimal("200"))
    return party


async def burst(urls: tuple[str, str], party: Party, endpoint: str, model: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=REQUESTS + 50, max_keepalive_connections=REQUESTS + 50)
    async with httpx.AsyncClient(timeout=40, limits=limits) as http:
        return await asyncio.gather(*[
            http.post(f"{urls[i % 2]}{URLS[endpoint]}", headers=party.auth,
                      json=body_for(endpoint, model, stream=bool(i // 2 % 2)))
            for i in range(REQUESTS)])


def wait_for(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.05)


@pytest.mark.parametrize("scope", ["tenant", "key", "both"])
@pytest.mark.parametrize(("endpoint", "model"), CASES)
def test_200_concurrent_dialect_requests_never_pass_a_small_hard_budget(
    servers: tuple[str, str], alice: Party, endpoint: str, model: str, scope: str
) -> None:
    # About twenty requests' worst cases (prompt ~40 tokens and 100 output tokens, $0.024) fit at once. With both,
    # the key's budget is the smaller: every request must fit both, and both count every admitted request.
    budget = Budget.objects.create(tenant=alice.tenant, key=alice.key if scope != "tenant" else None,
                                   amount=Decimal("0.50"), period="day")
    others = [Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.80"), period="day")] if scope == "both" else []
    started = time.monotonic()
    answers = asyncio.run(burst(servers, alice, endpoint, model))
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 429}, [(a.status_code, a.text[:300]) for a in answers if a.status_code not in (200, 429)][:3]

    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    for answer in refused:
        error = assert_error(endpoint, 429, answer.headers, answer.content, 429)
        assert answer.headers["x-should-retry"] == "false"
        if endpoint == RESPONSES:
            assert error["code"] == "insufficient_quota"
    for answer in admitted:
        if answer.headers["content-type"].startswith("text/event-stream"):
            assert_complete_stream(endpoint, answer.content)
        else:
            assert json.loads(answer.content)["type" if endpoint == MESSAGES else "status"] == (
                "message" if endpoint == MESSAGES else "completed")

    rows = UsageRecord.objects.filter(tenant=alice.tenant)
    wait_for(lambda: rows.count() >= REQUESTS, 15)
    assert rows.count() == REQUESTS
    by_id = {r.request_id.hex: r for r in rows}
    assert set(by_id) == {a.headers["x-request-id"] for a in answers}  # one row each, none without a request
    for answer in admitted:
        row = by_id[answer.headers["x-request-id"]]
        assert (row.endpoint, row.end_reason, row.status_code, row.public_model) == (endpoint, "complete", 200, model)
        assert 0 < row.cost_picos <= row.gate["held_micros"] * 10**6  # the hold was never below the cost
    for answer in refused:
        row = by_id[answer.headers["x-request-id"]]
        assert (row.endpoint, row.end_reason, row.status_code, row.error_code) == (
            endpoint, "rejected", 429, "insufficient_quota")
        assert row.gate["denied_by"] in {budget.pk, *(b.pk for b in others)} and row.cost_picos == 0

    spent = rows.aggregate(total=Sum("cost_picos"))["total"]
    assert 0 < spent <= budget.amount_micros * 10**6  # never past the budget
    client = redis_client()

    def healed() -> bool:
        open_slots = int(client.zcard(keyspace.rate(alice.tenant.pk, "key", alice.key.prefix) + ":c"))  # type: ignore[attr-defined]
        leases = int(client.zcard(keyspace.leases(alice.tenant.pk)))  # type: ignore[attr-defined]
        held = sum(budgets.status(b).reserved_micros for b in (budget, *others))
        return held == 0 and leases == 0 and open_slots == 0

    wait_for(healed, 5)
    assert [budgets.status(b).spent_picos for b in (budget, *others)] == [spent] * (1 + len(others))
    assert time.monotonic() - started < 60


# Tollgate's o200k estimate of the prompt is 33 tokens, held at half again for Claude: 49. A provider counting 44
# charges within the hold; one counting 66 charges beyond it.
@pytest.mark.parametrize("counted", [44, 66])
def test_a_provider_counting_more_tokens_than_o200k_passes_a_budget_only_by_what_it_charged_beyond_the_holds(
    servers: tuple[str, str], alice: Party, counted: int
) -> None:
    # The README's bound: past a hard budget by no more than TOLLGATE_BUDGET_OVERDRAFT_USD (0) while every provider
    # charges within the worst case held; a provider charging beyond it passes the budget by what it charged beyond
    # the holds of the requests admitted together, and no more.
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.50"), period="day")
    model = f"claude-over-{counted}"

    async def whole_bursts() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=REQUESTS + 50, max_keepalive_connections=REQUESTS + 50)
        async with httpx.AsyncClient(timeout=40, limits=limits) as http:
            return await asyncio.gather(*[
                http.post(f"{servers[i % 2]}{URLS[MESSAGES]}", headers=alice.auth, json=body_for(MESSAGES, model, tokens=5))
                for i in range(REQUESTS)])

    answers = asyncio.run(whole_bursts())
    assert {a.status_code for a in answers} == {200, 429}, {a.status_code for a in answers}
    rows = UsageRecord.objects.filter(tenant=alice.tenant)
    wait_for(lambda: rows.count() >= REQUESTS, 15)
    admitted = [r for r in rows if r.end_reason == "complete"]
    assert admitted and all(r.prompt_tokens == counted for r in admitted)
    beyond = sum(max(r.cost_picos - r.gate["held_micros"] * 10**6, 0) for r in admitted)
    assert (beyond == 0) is (counted == 44)  # within the margin the hold covers the charge; past it, not
    spent = rows.aggregate(total=Sum("cost_picos"))["total"]
    assert spent <= budget.amount_micros * 10**6 + beyond, (
        f"spent {spent} picos over {len(admitted)} admitted requests, budget {budget.amount_micros * 10**6}, "
        f"charged beyond the holds {beyond}")
    wait_for(lambda: budgets.status(budget).reserved_micros == 0, 5)
    assert budgets.status(budget).spent_picos == spent
