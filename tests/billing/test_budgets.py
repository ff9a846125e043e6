from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings

from billing import budgets, holds
from billing.budgets import BudgetSpec, period_bounds
from billing.models import Budget, Reservation

from ..conftest import Party


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_month_ends_at_local_midnight_in_the_tenants_zone() -> None:
    # 2026-02-01 07:30 UTC is still 31 January, 23:30 in Los Angeles.
    start, end = period_bounds("month", "America/Los_Angeles", utc(2026, 2, 1, 7, 30))
    assert (start, end) == (utc(2026, 1, 1, 8), utc(2026, 2, 1, 8))
    start, _ = period_bounds("month", "America/Los_Angeles", utc(2026, 2, 1, 8, 0))
    assert start == utc(2026, 2, 1, 8)


def test_december_rolls_into_the_next_year_and_weeks_start_on_monday() -> None:
    assert period_bounds("month", "Asia/Tokyo", utc(2026, 12, 31, 14, 59)) == (utc(2026, 11, 30, 15), utc(2026, 12, 31, 15))
    assert period_bounds("month", "Asia/Tokyo", utc(2026, 12, 31, 15, 0))[0] == utc(2026, 12, 31, 15)
    start, end = period_bounds("week", "UTC", utc(2026, 11, 26, 12))  # a Thursday
    assert (start, end) == (utc(2026, 11, 23), utc(2026, 11, 30))
    assert period_bounds("day", "Europe/Berlin", utc(2026, 3, 29, 12)) == (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))
    assert period_bounds("lifetime", "UTC", utc(2026, 1, 1))[1] is None


def spec(budget: Budget) -> BudgetSpec:
    return budgets.spec_of(Budget.objects.select_related("tenant").get(pk=budget.pk))


@pytest.fixture(params=["database", "redis"])
def backend(request: pytest.FixtureRequest, settings: object) -> holds.Backend:
    if request.param == "redis":
        import os

        if not os.environ.get("REDIS_URL"):
            pytest.skip("needs REDIS_URL (a real Redis server)")
        return holds.RedisBackend(os.environ["REDIS_URL"])
    return holds.DatabaseBackend()


def reserve(backend: holds.Backend, request_id: str, specs: tuple[BudgetSpec, ...], amount: int,
            now: datetime | None = None) -> holds.Hold:
    return async_to_sync(backend.reserve)(request_id, specs, amount, now or datetime.now(UTC))


@pytest.mark.django_db(transaction=True)
def test_all_budgets_hold_or_none_and_settling_turns_the_hold_into_the_cost(backend: holds.Backend, alice: Party) -> None:
    tenant_budget = spec(Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="month"))
    key_budget = spec(Budget.objects.create(tenant=alice.tenant, key=alice.key, amount=Decimal("0.10"), period="day"))
    both = (tenant_budget, key_budget)

    first = reserve(backend, "r1", both, 60_000)
    assert first.admitted and first.remaining_micros() == 40_000
    second = reserve(backend, "r2", both, 60_000)  # the key's $0.10 has 40,000 left: refused on both
    assert not second.admitted and second.denied_by is not None and second.denied_by.spec == key_budget
    start = period_bounds("month", "UTC", datetime.now(UTC))[0]
    assert backend.totals(tenant_budget, start) == (0, 60_000)  # the refused request held nothing anywhere

    async_to_sync(backend.settle)(first, 25_000 * 10**6)
    assert backend.totals(tenant_budget, start) == (25_000, 0)
    assert reserve(backend, "r3", both, 60_000).admitted  # 25,000 spent + 60,000 <= 100,000


@pytest.mark.django_db(transaction=True)
def test_soft_budgets_never_refuse_and_overdraft_stretches_hard_ones(backend: holds.Backend, alice: Party) -> None:
    soft = spec(Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.01"), hard=False))
    assert reserve(backend, "s1", (soft,), 50_000).admitted
    hard = spec(Budget.objects.create(tenant=alice.tenant, key=alice.key, amount=Decimal("0.01")))
    assert not reserve(backend, "h1", (hard,), 15_000).admitted
    with override_settings(TOLLGATE_BUDGET_OVERDRAFT_MICROS=5_000):
        assert reserve(backend, "h2", (hard,), 15_000).admitted


@pytest.mark.django_db(transaction=True)
def test_a_hold_whose_lease_ran_out_is_reaped_and_a_late_settlement_adds_only_the_cost(
    backend: holds.Backend, alice: Party
) -> None:
    budget = spec(Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="lifetime"))
    long_ago = datetime.now(UTC) - timedelta(hours=2)  # its lease (20 seconds) is long over
    hold = reserve(backend, "crashed", (budget,), 300_000, now=long_ago)
    start = budgets.LIFETIME_START
    assert backend.totals(budget, start) == (0, 300_000)
    assert backend.reap(datetime.now(UTC)) == 1
    assert backend.totals(budget, start) == (0, 0)
    assert backend.reap(datetime.now(UTC)) == 0
    async_to_sync(backend.settle)(hold, 7_000 * 10**6)  # the process was only slow, not dead
    assert backend.totals(budget, start) == (7_000, 0)
    async_to_sync(backend.settle)(hold, 7_000 * 10**6)  # and its settlement is replayed: nothing more
    assert backend.totals(budget, start) == (7_000, 0)
    assert not Reservation.objects.filter(state="open").exists()


@pytest.mark.django_db(transaction=True)
def test_a_new_period_starts_from_the_ledger_with_no_reset(backend: holds.Backend, alice: Party) -> None:
    from billing.models import UsageRecord

    budget = spec(Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="month"))
    # Spend from last month and this month, already in the ledger before the period's total exists.
    for when, cost in ((utc(2026, 10, 31, 23), 400_000), (utc(2026, 11, 2), 250_000)):
        UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", end_reason="complete",
                                   status_code=200, cost_picos=cost * 10**6, created_at=when)
    november = utc(2026, 11, 20)
    hold = reserve(backend, "n1", (budget,), 800_000, now=november)
    assert not hold.admitted and hold.checks[0].spent_micros == 250_000  # October's spend is not November's
    assert reserve(backend, "d1", (budget,), 800_000, now=utc(2026, 12, 1)).admitted


@pytest.mark.django_db(transaction=True)
def test_a_rotated_key_keeps_its_rate_limits_and_budgets_with_what_the_old_key_spent(
    backend: holds.Backend, alice: Party, bob: Party
) -> None:
    from accounts import services
    from accounts.models import ApiKey
    from billing.models import UsageRecord

    ApiKey.objects.filter(pk=alice.key.pk).update(requests_per_minute=5, tokens_per_minute=900, max_concurrent=2)
    old = ApiKey.objects.get(pk=alice.key.pk)
    budget = Budget.objects.create(tenant=alice.tenant, key=old, amount=Decimal("1.00"), period="month")
    other = Budget.objects.create(tenant=bob.tenant, key=bob.key, amount=Decimal("1.00"), period="month")
    for key, cost in ((old, 300_000), (bob.key, 50_000)):
        UsageRecord.objects.create(tenant=key.tenant, key=key, endpoint="chat", end_reason="complete", status_code=200,
                                   cost_picos=cost * 10**6)

    new, _ = services.rotate_key(key=old)
    newer, _ = services.rotate_key(key=new)
    assert (newer.requests_per_minute, newer.tokens_per_minute, newer.max_concurrent) == (5, 900, 2)
    budget.refresh_from_db()
    other.refresh_from_db()
    assert budget.key_id == newer.pk and other.key_id == bob.key.pk
    # The period's total is first built from the ledger: the old keys' spend still counts against it.
    hold = reserve(backend, "after-rotation", (spec(budget),), 800_000)
    assert not hold.admitted and hold.checks[0].spent_micros == 300_000
