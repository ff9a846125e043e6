"""200 concurrent requests against a small hard budget on a model glob, on a project, and on a tag, in process
through the handler that serves /v1, with the holds in Redis or in the database.

Only some requests match the narrow budget; the others must never be refused by it nor counted on it. Whatever the
interleaving (whole and streamed answers, a provider failing after the hold was taken): the ledger never passes the
budget by more than TOLLGATE_BUDGET_OVERDRAFT_USD, every request leaves exactly one row, the budget's running total
equals what the ledger holds for its scope to the pico-dollar, and no hold stays open.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from typing import Any
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings

from accounts.models import ApiKey, Project
from billing import budgets, holds, keyspace, pricing
from billing.models import Budget, Price, Reservation, UsageRecord
from proxy import limits, routing
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..factories import make_key, make_route
from ..proxy.v1_client import CHAT, AsgiReply, api_handler, json_headers

pytestmark = pytest.mark.django_db(transaction=True)

REQUESTS = 200
LIMIT = Decimal("0.10")  # about fifty requests' worth at $0.002 each


@pytest.fixture(params=["database", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    url = os.environ.get("REDIS_URL", "")
    if request.param == "redis":
        if not url:
            pytest.skip("needs REDIS_URL (a real Redis server)")
        import redis

        redis.Redis.from_url(url).flushdb()  # counters are keyed by budget ids, which other runs reused
    saved = django_settings.TOLLGATE_MONEY_REDIS_URL
    django_settings.TOLLGATE_MONEY_REDIS_URL = url if request.param == "redis" else ""
    holds.reset_backend()
    yield request.param
    django_settings.TOLLGATE_MONEY_REDIS_URL = saved
    holds.reset_backend()


@pytest.fixture
def routes(mock_upstream_url: str, alice: Party) -> None:
    ensure_demo_route()
    for model in ("mock", "mock-500"):
        make_route(model, upstream_model=model, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    for model in ("demo", "mock", "mock-500"):
        Price.objects.create(model=model, input_per_million=Decimal("100"), output_per_million=Decimal("200"))
    routing.invalidate()
    pricing.forget()
    limits.forget_budgets()


def request(party: Party, model: str, stream: bool = False, *, tags: str | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Count to three please"}],
                       "max_tokens": 5, "stream": stream}).encode()
    return body, json_headers(party, body, **({"x-tollgate-tags": tags} if tags else {}))


def streamed_or_whole(i: int) -> tuple[str, bool]:
    """Every third request streamed, from the built-in model (the mock streams past max_tokens: more than held)."""
    return ("demo", True) if i % 3 == 0 else ("mock", False)


async def call(body: bytes, headers: dict[str, str], leave_after: float | None = None) -> AsgiReply:
    """One request through the /v1 handler (as tests/proxy/v1_client.asgi_call, with room for 200 at once: in process
    the database steps of every request share one thread, and on PostgreSQL the last may wait several seconds).
    ``leave_after``: the client goes away that many seconds after sending its body (status 499 if before any answer)."""
    sent: list[dict[str, Any]] = []
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        if leave_after is None:
            await asyncio.Event().wait()  # the client neither sends more nor leaves
        await asyncio.sleep(leave_after or 0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    await asyncio.wait_for(api_handler()(scope, receive, send), timeout=60)
    start = next((m for m in sent if m["type"] == "http.response.start"), {"status": 499, "headers": []})
    return AsgiReply(status=start["status"], headers={k.decode().lower(): v.decode() for k, v in start["headers"]},
                     content=b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def burst(calls: list[tuple[bytes, dict[str, str]]], leaving: Callable[[int], float | None] = lambda i: None,
          ) -> list[AsgiReply]:
    async def run() -> list[AsgiReply]:
        return await asyncio.gather(*(call(body, headers, leaving(i)) for i, (body, headers) in enumerate(calls)))

    return async_to_sync(run)()


def open_holds(backend: str, tenant_id: int) -> int:
    if backend == "database":
        return Reservation.objects.filter(state=Reservation.State.OPEN).count()
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    held = [key for key in client.keys("tg:{t*}:hold:*") if client.hget(key, "state") == b"open"]
    return len(held) + int(client.zcard(keyspace.leases(tenant_id)))


def check(backend: str, party: Party, budget: Budget, answers: list[AsgiReply],
          covered: Callable[[UsageRecord], bool], others: tuple[Budget, ...] = ()) -> None:
    """The race's outcome: bounded, one row each, counters equal to the ledger, nothing held."""
    assert {a.status for a in answers} <= {200, 429, 502}, [a.content[:200] for a in answers if a.status >= 500][:2]
    rows = {r.request_id.hex: r for r in UsageRecord.objects.filter(tenant=party.tenant)}
    assert len(rows) == REQUESTS and set(rows) == {a["x-request-id"] for a in answers}
    mine = [r for r in rows.values() if covered(r)]
    refused = [r for r in rows.values() if r.end_reason == "rejected"]
    assert refused and all(covered(r) and r.gate["denied_by"] == budget.pk for r in refused)  # never an uncovered one
    assert any(r.end_reason == "complete" for r in mine)
    assert any(r.end_reason == "complete" and not covered(r) for r in rows.values())
    spent = sum(r.cost_picos for r in mine)
    assert 0 < spent <= (budget.amount_micros + holds.overdraft()) * 10**6
    assert all(r.cost_picos <= r.gate["held_micros"] * 10**6 for r in rows.values() if "held_micros" in r.gate)
    for each, total in ((budget, spent), *((b, sum(r.cost_picos for r in rows.values())) for b in others)):
        state = budgets.status(Budget.objects.get(pk=each.pk))
        spec = budgets.spec_of(Budget.objects.select_related("tenant", "key", "project").get(pk=each.pk))
        ledger = budgets.ledger_spent(spec, budgets.period_bounds(spec.period, spec.zone, datetime.now(UTC))[0])
        assert (state.spent_picos, state.reserved_micros) == (ledger, 0) == (total, 0)
    assert open_holds(backend, party.tenant.pk) == 0


def test_200_concurrent_requests_never_pass_a_model_glob_budget(backend: str, alice: Party, routes: None) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, amount=LIMIT, period="day", model="mock*")
    tenant = Budget.objects.create(tenant=alice.tenant, amount=Decimal("100"), period="day")
    # "demo" is outside the glob; "mock-500" is inside it and fails after its hold was taken.
    models = ["demo", "mock-500", "mock", "mock"]
    answers = burst([request(alice, models[i % 4], stream=i % 3 == 0 and models[i % 4] != "mock")
                     for i in range(REQUESTS)])
    assert {a.status for a in answers[1::4]} <= {429, 502}
    check(backend, alice, budget, answers, lambda r: r.public_model.startswith("mock"), (tenant,))


def test_200_concurrent_requests_never_pass_a_project_budget(backend: str, alice: Party, routes: None) -> None:
    project = Project.objects.create(tenant=alice.tenant, name="Search", slug="search")
    ApiKey.objects.filter(pk=alice.key.pk).update(project=project)
    key, secret = make_key(alice.tenant, name="outside the project")
    outside = Party(alice.tenant, alice.user, key, secret)
    budget = Budget.objects.create(tenant=alice.tenant, amount=LIMIT, period="day", project=project)
    answers = burst([request(alice if i % 2 else outside, *streamed_or_whole(i)) for i in range(REQUESTS)])
    check(backend, alice, budget, answers, lambda r: r.project_id == project.pk)


def test_200_concurrent_requests_never_pass_a_tag_budget(backend: str, alice: Party, routes: None) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, amount=LIMIT, period="week", tag="team:x")
    key_budget = Budget.objects.create(tenant=alice.tenant, key=alice.key, amount=Decimal("50"), period="month")
    tags = ["team:x", "team:y", "env:prod,team:x", None]
    answers = burst([request(alice, *streamed_or_whole(i), tags=tags[i % 4]) for i in range(REQUESTS)])
    check(backend, alice, budget, answers, lambda r: ",team:x," in r.tags, (key_budget,))


def test_clients_leaving_a_race_on_a_tag_budget_leave_one_row_each_and_nothing_held(
    backend: str, alice: Party, routes: None
) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, amount=LIMIT, period="day", tag="team:x")
    # Every third client leaves: at once, or while its answer is on its way (streams from the built-in model).
    answers = burst([request(alice, *streamed_or_whole(i), tags="team:x" if i % 2 else "team:y")
                     for i in range(REQUESTS)], leaving=lambda i: (0.0, 0.02, 0.1)[i // 3 % 3] if i % 3 == 1 else None)
    assert {a.status for a in answers} <= {200, 429, 499}
    rows = list(UsageRecord.objects.filter(tenant=alice.tenant))
    # A client gone before its request was read reached no provider and has no row; every other one has one.
    leavers = sum(1 for i in range(REQUESTS) if i % 3 == 1)
    assert REQUESTS - leavers <= len(rows) == len({r.request_id for r in rows}) <= REQUESTS
    assert {a["x-request-id"] for a in answers if a.status != 499} <= {r.request_id.hex for r in rows}
    assert any(r.end_reason not in ("complete", "rejected") for r in rows)  # some clients did leave mid-request
    mine = sum(r.cost_picos for r in rows if ",team:x," in r.tags)
    assert 0 < mine <= (budget.amount_micros + holds.overdraft()) * 10**6
    state = budgets.status(Budget.objects.get(pk=budget.pk))
    spec = budgets.spec_of(Budget.objects.select_related("tenant").get(pk=budget.pk))
    ledger = budgets.ledger_spent(spec, budgets.period_bounds(spec.period, spec.zone, datetime.now(UTC))[0])
    assert (state.spent_picos, state.reserved_micros) == (ledger, 0) == (mine, 0)
    assert open_holds(backend, alice.tenant.pk) == 0
