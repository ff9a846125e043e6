"""Budgets and rate limits through live Tollgate processes, as SDK clients meet them.

Each backend gets its own server: holds and limit counters in Redis, or (no REDIS_URL) budget rows locked in
PostgreSQL. The mock upstream reports 10 prompt and 5 completion tokens for "mock", and PROMPT counts 10 tokens
by Tollgate's tokenizer, so with max_tokens=5 the worst case held equals the cost charged.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from django.db import connection
from openai import AsyncOpenAI

from accounts.models import ApiKey, Tenant
from billing import budgets, keyspace
from billing.models import Budget, BudgetPeriod, Price, Reservation, UsageRecord, picos_to_micros_up

from ..conftest import Party, make_party
from ..factories import make_key, make_route
from ..live import tollgate_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.needs_postgres]

PROMPT = [{"role": "user", "content": "Count to three please"}]
COST = 10 * 100 + 5 * 200  # micro-dollars per "mock" request at the prices below: $0.002
MODELS = ("mock", "mock-long", "mock-cut", "mock-hang", "mock-500", "mock-slow")


def redis_client() -> object:
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


@pytest.fixture(scope="module")
def servers(django_db_setup: None, mock_upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two processes sharing Redis, and one keeping budgets in the database alone."""
    logs: Path = tmp_path_factory.mktemp("limits")
    name = connection.settings_dict["NAME"]
    common = {"TOLLGATE_UPSTREAM_READ_TIMEOUT": "1"}
    with tollgate_server(name, logs / "database.log", REDIS_URL="", **common) as database:
        if not os.environ.get("REDIS_URL"):
            yield {"database": database}
            return
        with tollgate_server(name, logs / "redis-1.log", **common) as one, \
                tollgate_server(name, logs / "redis-2.log", **common) as two:
            yield {"database": database, "redis": one, "redis-2": two}


@pytest.fixture
def alice(transactional_db: None) -> Party:
    if os.environ.get("REDIS_URL"):
        redis_client().flushdb()  # counters are keyed by budget id and tenant slug, which tests reuse
    return make_party("alice")


@pytest.fixture
def priced(mock_upstream_url: str, transactional_db: None) -> None:
    for model in MODELS:
        make_route(model, upstream_model=model, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
        Price.objects.create(model=model, input_per_million=Decimal("100"), output_per_million=Decimal("200"))


def server(servers: dict[str, str], backend: str) -> str:
    if backend not in servers:
        pytest.skip("needs REDIS_URL (a real Redis server)")
    return servers[backend]


def client(url: str, secret: str) -> AsyncOpenAI:
    # One connection per concurrent request: the point is to arrive at the same time.
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=500, max_keepalive_connections=500), timeout=30)
    return AsyncOpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0, http_client=http)


async def ask(sdk: AsyncOpenAI, model: str = "mock", **options: object) -> object:
    try:
        return await sdk.chat.completions.with_raw_response.create(model=model, messages=PROMPT, max_tokens=5, **options)
    except openai.APIStatusError as error:
        return error


def rows_of(tenant: Tenant, expected: int) -> list[UsageRecord]:
    deadline = time.monotonic() + 10
    while (count := UsageRecord.objects.filter(tenant=tenant).count()) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count == expected
    return list(UsageRecord.objects.filter(tenant=tenant))


def open_holds(backend: str) -> int:
    if backend == "database":
        return Reservation.objects.filter(state="open").count()  # closed ones stay a while as markers
    client = redis_client()
    held = [key for key in client.keys("tg:{t*}:hold:*") if client.hget(key, "state") == b"open"]  # type: ignore[attr-defined]
    leases = sum(int(client.zcard(key)) for key in client.keys("tg:{t*}:holds"))  # type: ignore[attr-defined]
    return leases + len(held)


def totals(budget: Budget, backend: str) -> tuple[int, int]:
    """This period's (spent, reserved) where the server keeps them."""
    if backend == "database":
        period = BudgetPeriod.objects.get(budget=budget)
        return picos_to_micros_up(period.spent_picos), period.reserved_micros
    state = budgets.status(budget)
    return state.spent_micros, state.reserved_micros


def settled(budget: Budget, backend: str, spent: int) -> tuple[tuple[int, int], int]:
    """(spent, reserved) and open holds once every hold is settled: a hold is settled just after its row is written."""
    deadline = time.monotonic() + 5
    while (totals(budget, backend), open_holds(backend)) != ((spent, 0), 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    return totals(budget, backend), open_holds(backend)


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_200_concurrent_requests_spend_a_small_hard_budget_exactly(
    servers: dict[str, str], backend: str, alice: Party, priced: None
) -> None:
    url = server(servers, backend)
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.10"), period="day")  # 50 requests' worth

    async def burst() -> list[object]:
        async with client(url, alice.secret) as sdk:
            return await asyncio.gather(*(ask(sdk) for _ in range(200)))

    answers = asyncio.run(burst())
    admitted = [a for a in answers if not isinstance(a, Exception)]
    denied = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert len(admitted) + len(denied) == 200, [a for a in answers if isinstance(a, Exception)][:3]
    assert len(admitted) == budget.amount_micros // COST == 50
    assert {d.code for d in denied} == {"insufficient_quota"}  # type: ignore[attr-defined]
    assert {d.response.headers["x-should-retry"] for d in denied} == {"false"}

    rows = rows_of(alice.tenant, 200)
    complete = [r for r in rows if r.end_reason == "complete"]
    assert len(complete) == 50 and sum(1 for r in rows if r.end_reason == "rejected") == 150
    spent = sum(r.cost_picos for r in rows) // 10**6
    assert spent * 10**6 == sum(r.cost_picos for r in rows)
    assert spent == 50 * COST == budget.amount_micros  # to the micro-dollar, never above
    assert settled(budget, backend, spent) == ((spent, 0), 0)


@pytest.mark.needs_redis
def test_a_requests_per_minute_limit_holds_across_two_server_processes(
    servers: dict[str, str], alice: Party, priced: None
) -> None:
    ApiKey.objects.filter(pk=alice.key.pk).update(requests_per_minute=12)
    if time.time() % 60 > 50:  # the 36 requests must fall in one minute window
        time.sleep(61 - time.time() % 60)

    async def burst() -> list[object]:
        async with client(servers["redis"], alice.secret) as one, client(servers["redis-2"], alice.secret) as two:
            return await asyncio.gather(*(ask(one if i % 2 else two) for i in range(36)))

    answers = asyncio.run(burst())
    admitted = [a for a in answers if not isinstance(a, Exception)]
    limited = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert (len(admitted), len(limited)) == (12, 24)
    assert {d.code for d in limited} == {"rate_limit_exceeded"}  # type: ignore[attr-defined]
    assert all(1 <= int(d.response.headers["retry-after"]) <= 60 for d in limited)
    assert sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in admitted) == list(range(12))  # type: ignore[attr-defined]
    rows = rows_of(alice.tenant, 36)
    assert sorted(r.end_reason for r in rows).count("rejected") == 24


@pytest.mark.needs_redis
def test_requests_in_flight_are_limited_across_two_server_processes(
    servers: dict[str, str], alice: Party, priced: None
) -> None:
    Tenant.objects.filter(pk=alice.tenant.pk).update(max_concurrent=3)
    _, second = make_key(alice.tenant, name="second key")  # two keys, one tenant limit

    async def burst() -> list[object]:
        async with client(servers["redis"], alice.secret) as one, client(servers["redis-2"], second) as two:
            # mock-slow takes about a second, so all ten are in flight together.
            return await asyncio.gather(*(ask(one if i % 2 else two, "mock-slow", stream=True) for i in range(10)))

    answers = asyncio.run(burst())
    limited = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert len(limited) == 7 and all("3 requests in flight" in str(d) and "tenant" in str(d) for d in limited)
    rows_of(alice.tenant, 10)
    deadline = time.monotonic() + 5  # slots are given back just after each row is written
    slots = keyspace.rate(alice.tenant.pk, "tenant", alice.tenant.slug) + ":c"
    while redis_client().zcard(slots) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis_client().zcard(slots) == 0


@pytest.mark.parametrize("backend", ["redis", "database"])
def test_upstream_errors_timeouts_cuts_and_disconnects_settle_their_holds(
    servers: dict[str, str], backend: str, alice: Party, priced: None
) -> None:
    url = server(servers, backend)
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("5.00"), period="month")

    async def failures() -> list[object]:
        async with client(url, alice.secret) as sdk:
            answers = list(await asyncio.gather(ask(sdk, "mock-500"), ask(sdk, "mock-hang")))
            try:
                async for _ in await sdk.chat.completions.create(model="mock-cut", messages=PROMPT, stream=True):
                    pass
            except openai.APIError as error:
                answers.append(error)
        # The client leaves a long stream after a few events.
        async with httpx.AsyncClient(timeout=10) as http:
            async with http.stream("POST", f"{url}/v1/chat/completions", headers=alice.auth,
                                   json={"model": "mock-long", "messages": PROMPT, "stream": True}) as response:
                lines = response.aiter_lines()
                answers.append([await anext(lines) for _ in range(10)])
        return answers

    server_error, timeout, cut, _ = asyncio.run(failures())
    assert isinstance(server_error, openai.InternalServerError) and server_error.status_code == 502
    assert isinstance(timeout, openai.InternalServerError) and timeout.status_code == 504
    assert isinstance(cut, openai.APIError)

    rows = {r.public_model: r for r in rows_of(alice.tenant, 4)}
    assert {m: r.end_reason for m, r in rows.items()} == {
        "mock-500": "upstream_error", "mock-hang": "timeout", "mock-cut": "upstream_cut", "mock-long": "client_gone"}
    # Nothing was delivered before the error or the timeout: nothing is charged. What was delivered is charged.
    assert rows["mock-500"].cost_picos == rows["mock-hang"].cost_picos == 0
    assert rows["mock-cut"].cost_picos > 0 and rows["mock-long"].cost_picos > 0
    assert all(r.gate["held_micros"] * 10**6 > r.cost_picos for r in rows.values())
    spent = picos_to_micros_up(sum(r.cost_picos for r in rows.values()))
    assert settled(budget, backend, spent) == ((spent, 0), 0)
