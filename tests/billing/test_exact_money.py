"""Money adds up to the last pico-dollar over many rows: ledger, rollups, budget totals and running counters agree."""

from __future__ import annotations

import asyncio
import os
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from django.db.models import Sum

from billing import budgets, holds, pricing, rollups
from billing.budgets import period_bounds
from billing.models import Budget, Price, UsageRecord, UsageRollup, picos_to_dollars
from billing.services import UsageEntry, record_usages

from ..conftest import Party

ROWS = 10_000
MONTH_START = datetime(2026, 10, 1, tzinfo=UTC)


def exact_picos(price: dict[str, str], prompt: int, cached: int, completion: int) -> int:
    """The cost worked out independently of billing.models, in exact fractions: a whole number of pico-dollars."""
    def rate(name: str) -> Fraction:
        return Fraction(price[name])
    value = ((prompt - cached) * rate("input") + cached * rate("cached") + completion * rate("output")
             + rate("request") * 1_000_000) * 1_000_000
    assert value.denominator == 1
    return int(value)


@pytest.mark.django_db(transaction=True)
def test_costs_of_10000_rows_sum_exactly_across_a_mid_month_price_change(alice: Party) -> None:
    # Prices chosen so that most rows carry a fraction of a micro-dollar before rounding.
    old = {"input": "0.15", "cached": "0.075", "output": "0.60", "request": "0.000013"}
    new = {"input": "0.17", "cached": "0.085", "output": "0.66", "request": "0.000017"}
    for prices, day in ((old, date(2026, 1, 1)), (new, date(2026, 10, 16))):
        Price.objects.create(model="mini", effective_from=day, input_per_million=Decimal(prices["input"]),
                             cached_input_per_million=Decimal(prices["cached"]),
                             output_per_million=Decimal(prices["output"]), per_request=Decimal(prices["request"]))
    pricing.forget()
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("1000"), period="month")

    rng = random.Random(20261123)
    entries, expected = [], 0
    for i in range(ROWS):
        created = MONTH_START + timedelta(seconds=i * (31 * 86400 - 1) // ROWS)
        prompt, completion = rng.randint(1, 20_000), rng.randint(0, 4_000)
        cached = rng.choice((0, 0, rng.randint(0, prompt)))
        entries.append(UsageEntry(tenant_id=alice.tenant.pk, key_id=alice.key.pk, endpoint="chat", end_reason="complete",
                                  status_code=200, public_model="mini", provider="openai", upstream_model="mini",
                                  prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
                                  ttfb_ms=5, created_at=created))
        expected += exact_picos(new if created.date() >= date(2026, 10, 16) else old, prompt, cached, completion)
    # With Redis, the running total the gate keeps: hold before each row is written, settle to its cost after.
    spec = budgets.spec_of(budget)
    starts_at, ends_at = period_bounds("month", "UTC", MONTH_START + timedelta(days=3))
    backend = holds.RedisBackend(os.environ["REDIS_URL"]) if os.environ.get("REDIS_URL") else None
    now = MONTH_START + timedelta(days=30)
    if backend:
        backend.sync_client().delete(holds.counter_key(spec, starts_at))
        taken = asyncio.run(hold_each(backend, spec, now))
        assert all(hold.admitted for hold in taken)  # 1,000 at once through a pool of fewer connections and backend.totals(spec, starts_at) == (0, ROWS * 50_000)

    records = [r for start in range(0, ROWS, 500) for r in record_usages(entries=entries[start:start + 500])]

    ledger = UsageRecord.objects.filter(tenant=alice.tenant)
    assert ledger.count() == ROWS and ledger.filter(price__isnull=True).count() == 0
    assert ledger.aggregate(total=Sum("cost_picos"))["total"] == expected
    assert sum(picos_to_dollars(r.cost_picos) for r in records) == picos_to_dollars(expected)  # Decimal, no drift
    assert starts_at == MONTH_START and budgets.ledger_spent(spec, starts_at, until=ends_at) == expected
    # The rollups: every hour and every day of the month adds up to the same pico-dollar.
    assert rollups.roll_up(chunk=ROWS).rows_read == ROWS
    for granularity, windows in (("hour", 31 * 24), ("day", 31)):
        rolled = UsageRollup.objects.filter(granularity=granularity, tenant=alice.tenant)
        assert rolled.count() == windows and rolled.aggregate(total=Sum("cost_picos"))["total"] == expected
        assert rolled.aggregate(requests=Sum("requests"))["requests"] == ROWS
    if backend:
        asyncio.run(settle_each(backend, taken, [r.cost_picos for r in records]))
        assert backend.exact_totals(spec, starts_at) == (expected, 0)
        spent, remainder = backend.sync_client().hmget(holds.counter_key(spec, starts_at), "s", "p")
        assert int(spent) * 10**6 + int(remainder) == expected and 0 <= int(remainder) < 10**6


async def hold_each(backend: holds.RedisBackend, spec: budgets.BudgetSpec, now: datetime) -> list[holds.Hold]:
    taken: list[holds.Hold] = []
    for batch in range(0, ROWS, 1000):
        taken += await asyncio.gather(*(backend.reserve(f"exact-{i}", (spec,), 50_000, now)
                                        for i in range(batch, min(batch + 1000, ROWS))))
    return taken


async def settle_each(backend: holds.RedisBackend, taken: list[holds.Hold], costs: list[int]) -> None:
    for batch in range(0, ROWS, 1000):
        await asyncio.gather(*(backend.settle(hold, cost)
                               for hold, cost in zip(taken[batch:batch + 1000], costs[batch:batch + 1000])))


@pytest.fixture(params=["database", "redis"])
def backend(request: pytest.FixtureRequest) -> holds.Backend:
    if request.param == "redis":
        if not os.environ.get("REDIS_URL"):
            pytest.skip("needs REDIS_URL (a real Redis server)")
        return holds.RedisBackend(os.environ["REDIS_URL"])
    return holds.DatabaseBackend()


@pytest.mark.django_db(transaction=True)
def test_a_thousand_embeddings_of_two_tokens_cost_exactly_four_hundred_thousandths_of_a_dollar(
    backend: holds.Backend, alice: Party
) -> None:
    # 2 tokens at $0.02 per million is $0.00000004: rounded per row to the micro-dollar, it was 0.
    Price.objects.create(model="embed-small", effective_from=date(2020, 1, 1), input_per_million=Decimal("0.02"),
                         output_per_million=Decimal("0"))
    pricing.forget()
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), period="lifetime")
    spec = budgets.spec_of(budget)
    if isinstance(backend, holds.RedisBackend):
        backend.sync_client().delete(holds.counter_key(spec, budgets.LIFETIME_START))
    now = datetime.now(UTC)
    entries = [UsageEntry(tenant_id=alice.tenant.pk, key_id=alice.key.pk, endpoint="embeddings", end_reason="complete",
                          status_code=200, public_model="embed-small", provider="openai", upstream_model="embed-small",
                          prompt_tokens=2, completion_tokens=0, ttfb_ms=3, request_id=f"{i:032x}", created_at=now)
               for i in range(1000)]

    async def hold(count: int) -> list[holds.Hold]:
        return [await backend.reserve(f"{i:032x}", (spec,), 1, now) for i in range(count)]

    async def settle(taken: list[holds.Hold], costs: list[int]) -> None:
        for held, cost in zip(taken, costs):
            await backend.settle(held, cost)

    taken = asyncio.run(hold(1000))
    assert all(h.admitted and h.keys for h in taken)
    written = record_usages(entries=entries)
    asyncio.run(settle(taken, [r.cost_picos for r in written]))

    assert {r.cost_picos for r in written} == {40_000}
    ledger = UsageRecord.objects.filter(tenant=alice.tenant).aggregate(total=Sum("cost_picos"))["total"]
    assert picos_to_dollars(ledger) == Decimal("0.00004")
    rollups.roll_up()
    rolled = UsageRollup.objects.filter(granularity="day", tenant=alice.tenant).aggregate(total=Sum("cost_picos"))
    assert picos_to_dollars(rolled["total"]) == Decimal("0.00004")
    assert backend.exact_totals(spec, budgets.LIFETIME_START) == (ledger, 0)
    assert backend.totals(spec, budgets.LIFETIME_START) == (40, 0)
    assert budgets.ledger_spent(spec, budgets.LIFETIME_START) == ledger == 40 * 10**6
