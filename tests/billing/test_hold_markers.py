"""Holds settle exactly once, zero holds settle like any other, and leases are renewed and reaped with markers."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync

from billing import budgets, holds, scripts
from billing.budgets import BudgetSpec, period_bounds
from billing.models import Budget, Reservation

from ..conftest import Party

PICOS = 10**6  # pico-dollars per micro-dollar


@pytest.fixture(params=["database", "redis"])
def backend(request: pytest.FixtureRequest) -> holds.Backend:
    if request.param == "redis":
        if not os.environ.get("REDIS_URL"):
            pytest.skip("needs REDIS_URL (a real Redis server)")
        return holds.RedisBackend(os.environ["REDIS_URL"])
    return holds.DatabaseBackend()


def spec_of(budget: Budget) -> BudgetSpec:
    spec = budgets.spec_of(Budget.objects.select_related("tenant").get(pk=budget.pk))
    backend = holds.backend()
    if isinstance(backend, holds.RedisBackend):  # a counter left by an earlier run of the same ids
        start = period_bounds(spec.period, spec.zone, datetime.now(UTC))[0]
        backend.sync_client().delete(holds.counter_key(spec, start))
    return spec


def reserve(backend: holds.Backend, request_id: str, specs: tuple[BudgetSpec, ...], amount: int,
            now: datetime | None = None) -> holds.Hold:
    if isinstance(backend, holds.RedisBackend):
        backend.sync_client().delete(holds.hold_key(specs[0].tenant_id, request_id))
    return async_to_sync(backend.reserve)(request_id, specs, amount, now or datetime.now(UTC))


def settle(backend: holds.Backend, hold: holds.Hold, picos: int) -> None:
    async_to_sync(backend.settle)(hold, picos)


@pytest.mark.django_db(transaction=True)
def test_settling_the_same_hold_twice_adds_its_cost_once(backend: holds.Backend, alice: Party, settings: object) -> None:
    spec = spec_of(Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="lifetime"))
    hold = reserve(backend, "twice", (spec,), 50_000)
    settle(backend, hold, 12_345_678)  # 12.345678 micro-dollars
    settle(backend, hold, 12_345_678)
    assert backend.exact_totals(spec, budgets.LIFETIME_START) == (12_345_678, 0)
    assert backend.totals(spec, budgets.LIFETIME_START) == (13, 0)  # a started micro-dollar counts whole


@pytest.mark.django_db(transaction=True)
def test_a_hold_of_zero_is_still_a_hold_and_its_cost_reaches_the_hard_budget(backend: holds.Backend, alice: Party) -> None:
    # An unpriced model (or a free prompt) holds 0: it used to leave no hold, settle nothing, and pass a hard budget.
    spec = spec_of(Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.03"), period="lifetime"))
    admitted = 0
    for i in range(50):
        hold = reserve(backend, f"zero-{i}", (spec,), 0)
        if not hold.admitted:
            break
        assert hold.keys, "an admitted request must know where to settle"
        admitted += 1
        settle(backend, hold, 1_000 * PICOS)  # each costs $0.001 once answered
    # Holding nothing, a request fits while the spend is at most the limit; once it is past, the budget refuses.
    assert admitted == 31
    assert backend.totals(spec, budgets.LIFETIME_START) == (31_000, 0)
    assert not reserve(backend, "zero-after", (spec,), 0).admitted


@pytest.mark.django_db(transaction=True)
def test_a_reaped_hold_settled_later_adds_only_the_cost_once_and_its_marker_is_pruned(
    backend: holds.Backend, alice: Party
) -> None:
    spec = spec_of(Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="lifetime"))
    then = datetime.now(UTC) - timedelta(minutes=5)
    hold = reserve(backend, "slow", (spec,), 400_000, now=then)
    assert backend.reap(datetime.now(UTC)) == 1
    assert backend.totals(spec, budgets.LIFETIME_START) == (0, 0)
    settle(backend, hold, 9 * PICOS)
    settle(backend, hold, 9 * PICOS)
    assert backend.totals(spec, budgets.LIFETIME_START) == (9, 0)
    if isinstance(backend, holds.RedisBackend):
        ttl = backend.sync_client().ttl(holds.hold_key(alice.tenant.pk, "slow"))
        assert 0 < ttl <= holds.MARKER_SECONDS  # Redis drops the marker by itself
    else:
        assert Reservation.objects.get(request_id="slow").state == "settled"
        backend.reap(datetime.now(UTC) + timedelta(days=3))
        assert not Reservation.objects.filter(request_id="slow").exists()


@pytest.mark.django_db(transaction=True)
def test_a_renewed_lease_is_not_reaped_and_a_closed_hold_is_not_renewed(backend: holds.Backend, alice: Party) -> None:
    spec = spec_of(Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="lifetime"))
    start = datetime.now(UTC) - timedelta(seconds=60)
    running = reserve(backend, "long-stream", (spec,), 100_000, now=start)
    done = reserve(backend, "done", (spec,), 100_000, now=start)
    settle(backend, done, 0)
    later = datetime.now(UTC) + timedelta(seconds=20)
    ids = ["long-stream", "done", "never-held"]
    if isinstance(backend, holds.RedisBackend):
        held = [running, done, holds.Hold("never-held", 0, [], True, running.keys)]
        [moved] = async_to_sync(scripts.run)(backend.url, backend.renewal(held, later))
    else:
        assert isinstance(backend, holds.DatabaseBackend)
        moved = backend.renew(ids, later)
    assert moved == 1
    assert backend.reap(datetime.now(UTC)) == 0  # renewed: still running
    assert backend.totals(spec, budgets.LIFETIME_START) == (0, 100_000)
    assert backend.reap(later + timedelta(seconds=1)) == 1  # and then its process died
    settle(backend, running, 3 * PICOS)
    assert backend.totals(spec, budgets.LIFETIME_START) == (3, 0)


def test_the_renewal_script_moves_only_leases_in_the_set() -> None:
    held = [holds.Hold(request_id, 1, [], True, [f"tg:{{t{tenant}}}:budget:1:0"]) for request_id, tenant in
            (("a", 7), ("b", 7), ("c", 8))]
    calls = holds.RedisBackend("redis://unused").renewal(held, datetime(2026, 1, 1, tzinfo=UTC))
    at = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    # One call per tenant: a script's keys stay in one hash slot.
    assert [(c.keys, c.args) for c in calls] == [(["tg:{t7}:holds"], [at, "a", "b"]), (["tg:{t8}:holds"], [at, "c"])]
    assert "'XX'" in calls[0].script
