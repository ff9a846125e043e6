"""Holding money for requests in flight: reserve the worst case on every budget at once, settle to the cost.

With Redis configured the running totals live there and each step is one Lua script, atomic across every
server process, run from the event loop with no thread hop. Without Redis they are BudgetPeriod rows,
changed in one transaction on the database thread (SQLite serializes writers; PostgreSQL locks the rows).
Every hold carries a lease (renewed while its request runs): if its process dies, the reaper (a periodic task)
releases it. A closed hold stays a while as a marker, so that settling is idempotent: settled twice, a cost is
added once; settled after the reaper released it, the cost is added alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from . import budgets, keyspace, scripts
from .hold_scripts import CREATE, FORGET, LEGACY_STATE, REAP, REGISTER, RENEW, RESERVE, SETTLE
from .budgets import BudgetSpec, Check
from .models import PICOS_PER_MICRO, picos_to_micros_up
from .scripts import Call


@dataclass
class Hold:
    """What a request holds; settling it exactly once is the gate's job."""

    request_id: str
    amount_micros: int
    checks: list[Check]
    admitted: bool
    keys: list[Any] = field(default_factory=list)  # Redis counter keys or BudgetPeriod ids

    @property
    def denied_by(self) -> Check | None:
        return next((c for c in self.checks if c.spec.hard and not self.admitted and self.over(c)), None)

    def over(self, check: Check) -> bool:
        return check.spent_micros + check.reserved_micros + self.amount_micros > check.spec.limit_micros + overdraft()

    def remaining_micros(self) -> int | None:
        """The least any applicable budget has left after this hold, or None without budgets."""
        if not self.checks:
            return None
        held = self.amount_micros if self.admitted else 0
        return min(c.spec.limit_micros - c.spent_micros - c.reserved_micros - held for c in self.checks)


def overdraft() -> int:
    return settings.TOLLGATE_BUDGET_OVERDRAFT_MICROS


class Backend(Protocol):
    async def reserve(self, request_id: str, specs: tuple[BudgetSpec, ...], amount: int, now: datetime) -> Hold: ...
    async def settle(self, hold: Hold, cost_picos: int) -> None: ...
    def totals(self, spec: BudgetSpec, starts_at: datetime) -> tuple[int, int]:
        """(spent, reserved) in micro-dollars, a started micro-dollar of spend counted whole."""
    def exact_totals(self, spec: BudgetSpec, starts_at: datetime) -> tuple[int, int]:
        """(spent in pico-dollars, exact; reserved in micro-dollars)."""
    def reap(self, now: datetime) -> int: ...


class DatabaseBackend:
    async def reserve(self, request_id: str, specs: tuple[BudgetSpec, ...], amount: int, now: datetime) -> Hold:
        from proxy.db import db_step

        admitted, checks, ids = await db_step(budgets.db_reserve)(request_id, specs, amount, overdraft(), now)
        return Hold(request_id, amount, checks, admitted, ids)

    async def settle(self, hold: Hold, cost_picos: int) -> None:
        from proxy.db import db_step

        await db_step(settle_in_transaction, retry=True)(hold.request_id, hold.keys, cost_picos)

    def totals(self, spec: BudgetSpec, starts_at: datetime) -> tuple[int, int]:
        spent, reserved = self.exact_totals(spec, starts_at)
        return picos_to_micros_up(spent), reserved

    def exact_totals(self, spec: BudgetSpec, starts_at: datetime) -> tuple[int, int]:
        return budgets.db_totals(spec, starts_at)

    def renew(self, request_ids: list[str], expires_at: datetime) -> int:
        """Move the lease of the holds still open to ``expires_at`` (one UPDATE; run it on the database thread).
        Returns how many were moved."""
        return budgets.db_renew(request_ids, expires_at)

    def reap(self, now: datetime) -> int:
        return budgets.db_reap(now)


def settle_in_transaction(request_id: str, period_ids: list[int], cost_picos: int) -> None:
    from django.db import transaction

    with transaction.atomic():
        budgets.db_settle(request_id, period_ids, cost_picos)


MARKER_SECONDS = 2 * 86400  # how long a closed hold is remembered (see SETTLE); then Redis drops it by itself
# A process registers a tenant in keyspace.TENANTS before its first hold there, as registered for a day, and again
# after an hour: the reaper forgets a tenant only when its date has passed and it has no lease left.
REGISTERED_SECONDS = 86400
REREGISTER_SECONDS = 3600


def counter_key(spec: BudgetSpec, starts_at: datetime) -> str:
    return keyspace.counter(spec.tenant_id, spec.id, int(starts_at.timestamp()))


def hold_key(tenant_id: int, request_id: str) -> str:
    return keyspace.hold(tenant_id, request_id)


def tenant_of(hold: Hold) -> int:
    tenant_id = keyspace.tenant_of(hold.keys[0])
    if tenant_id is None:
        raise ValueError(f"a hold on keys of the old layout: {hold.keys[0]}")
    return tenant_id


@dataclass(frozen=True)
class PendingHold:
    """A hold about to be asked of Redis: the script call and what is needed to read its answer."""

    request_id: str
    specs: tuple[BudgetSpec, ...]
    amount: int
    periods: list[tuple[datetime, datetime | None]]
    call: Call


class RedisBackend:
    def __init__(self, url: str) -> None:
        self.url = url
        self._sync: Any = None
        self._registered: dict[int, float] = {}  # tenant id -> when this process last registered it

    def sync_client(self) -> Any:
        """A thread-safe client for the admin, the jobs and the tests (not the event loop)."""
        if self._sync is None:
            self._sync = scripts.sync_client(self.url)
        return self._sync

    async def register(self, tenant_id: int) -> None:
        """Make sure the reaper knows the tenant before this process holds anything there (a round trip once an
        hour per tenant, none otherwise)."""
        now = time.time()
        if now - self._registered.get(tenant_id, 0.0) < REREGISTER_SECONDS:
            return
        await scripts.run(self.url, [Call(REGISTER, [keyspace.TENANTS], [tenant_id, int(now) + REGISTERED_SECONDS])])
        self._registered[tenant_id] = now

    def pending(self, request_id: str, specs: tuple[BudgetSpec, ...], amount: int, now: datetime) -> PendingHold:
        periods = [budgets.period_bounds(s.period, s.zone, now) for s in specs]
        keys = [counter_key(s, start) for s, (start, _) in zip(specs, periods)]
        expires = now + timedelta(seconds=settings.TOLLGATE_RESERVATION_LEASE_SECONDS)
        args: list[Any] = [amount, overdraft(), int(expires.timestamp()), request_id]
        for spec in specs:
            args += [spec.limit_micros, 1 if spec.hard else 0]
        tenant_id = specs[0].tenant_id  # the budgets that apply to a request are all its tenant's
        call = Call(RESERVE, [*keys, keyspace.hold(tenant_id, request_id), keyspace.leases(tenant_id)], args)
        return PendingHold(request_id, specs, amount, periods, call)

    def hold_of(self, pending: PendingHold, result: Any) -> Hold | None:
        """The hold Redis answered with, or None when a period's running total must first be created."""
        ok, state = result
        if ok == -1:
            return None
        checks = [Check(spec, start, int(state[2 * i]), int(state[2 * i + 1]))
                  for i, (spec, (start, _)) in enumerate(zip(pending.specs, pending.periods))]
        admitted = ok == 1
        keys = pending.call.keys[:-2] if admitted and pending.specs else []
        return Hold(pending.request_id, pending.amount, checks, admitted, keys)

    async def reserve(self, request_id: str, specs: tuple[BudgetSpec, ...], amount: int, now: datetime) -> Hold:
        return await self.complete(self.pending(request_id, specs, amount, now), None, now)

    async def complete(self, pending: PendingHold, result: Any, now: datetime) -> Hold:
        """Finish a hold whose script already ran (result) or not yet (None), creating missing totals first."""
        for _ in range(3):
            if result is None:
                await self.register(pending.specs[0].tenant_id)
                [result] = await scripts.run(self.url, [pending.call])
            hold = self.hold_of(pending, result)
            if hold is not None:
                return hold
            missing = [i - 1 for i in result[1]]
            await self.create_counters([pending.specs[i] for i in missing], [pending.periods[i] for i in missing],
                                       now)
            result = None
        raise RuntimeError("budget counters could not be created")

    async def create_counters(self, specs: list[BudgetSpec], periods: list[tuple[datetime, datetime | None]],
                              now: datetime) -> None:
        """Start the running totals of periods used for the first time (or lost by Redis) from the ledger."""
        spent = await sync_to_async(lambda: [budgets.ledger_spent(s, start) for s, (start, _) in zip(specs, periods)])()
        args: list[Any] = []
        for total, (_, end) in zip(spent, periods):
            # Kept a day past the period's end so late settlements still find it, then gone: no reset job.
            args += [*divmod(total, PICOS_PER_MICRO), int((end - now).total_seconds()) + 86400 if end else 0]
        keys = [counter_key(s, start) for s, (start, _) in zip(specs, periods)]
        await scripts.run(self.url, [Call(CREATE, keys, args)])

    def settlement(self, hold: Hold, cost_picos: int) -> Call | None:
        """The script that settles the hold at the cost (pico-dollars), or None when it holds nothing anywhere."""
        if not hold.keys:
            return None
        micros, rest = divmod(cost_picos, PICOS_PER_MICRO)
        tenant_id = tenant_of(hold)
        return Call(SETTLE, [*hold.keys, keyspace.hold(tenant_id, hold.request_id), keyspace.leases(tenant_id)],
                    [micros, rest, hold.request_id, MARKER_SECONDS])

    async def settle(self, hold: Hold, cost_picos: int) -> None:
        if hold.keys and keyspace.tenant_of(hold.keys[0]) is None:
            # A journal written before the keys were tagged, replayed after the upgrade (billing/layout.py): a hold
            # settled then is marked under its old name; an open one moved, with its counters.
            from . import layout

            [state] = await scripts.run(self.url, [Call(LEGACY_STATE, [layout.OLD_HOLD + hold.request_id], [])])
            if state == b"settled":
                return
            hold = Hold(hold.request_id, hold.amount_micros, hold.checks, hold.admitted,
                        await sync_to_async(layout.current_keys)(hold.keys))
            if keyspace.tenant_of(hold.keys[0]) is None:
                return  # its budgets are gone
        if call := self.settlement(hold, cost_picos):
            await scripts.run(self.url, [call])

    def totals(self, spec: BudgetSpec, starts_at: datetime) -> tuple[int, int]:
        spent, reserved = self.exact_totals(spec, starts_at)
        return picos_to_micros_up(spent), reserved

    def exact_totals(self, spec: BudgetSpec, starts_at: datetime) -> tuple[int, int]:
        values = self.sync_client().hmget(counter_key(spec, starts_at), "s", "p", "r")
        if values[0] is None:
            return budgets.ledger_spent(spec, starts_at), 0
        return int(values[0]) * PICOS_PER_MICRO + int(values[1] or 0), int(values[2] or 0)

    def renewal(self, held: list[Hold], expires_at: datetime) -> list[Call]:
        """The scripts (one per tenant) that move the lease of those of the holds still open to ``expires_at``."""
        by_tenant: dict[int, list[str]] = {}
        for hold in held:
            if hold.keys:
                by_tenant.setdefault(tenant_of(hold), []).append(hold.request_id)
        return [Call(RENEW, [keyspace.leases(tenant_id)], [int(expires_at.timestamp()), *request_ids])
                for tenant_id, request_ids in by_tenant.items()]

    def reap(self, now: datetime) -> int:
        """Release the holds whose lease ran out, tenant by tenant (each tenant's scripts stay in its slot).

        The registry is exact: a process registers a tenant (awaited) before it holds anything there and again
        every hour, each time as registered for a day. A tenant whose date has passed has had no hold begun for
        23 hours, and any process about to hold there registers it first; so once its leases are gone it is
        dropped, unless a registration came meanwhile (FORGET compares the date read).
        """
        client, total, at = self.sync_client(), 0, int(now.timestamp())
        registered = {int(t): v for t, v in client.hgetall(keyspace.TENANTS).items()}
        tenants = list(registered)
        while tenants:
            batch, tenants = tenants[:200], tenants[200:]
            pipe = client.pipeline(transaction=False)
            for tenant_id in batch:
                # execute_command: a cluster client's pipeline has no eval(), and routes EVAL by its key all the same
                pipe.execute_command("EVAL", REAP, 1, keyspace.leases(tenant_id), at, 500, keyspace.hold(tenant_id, ""),
                                     MARKER_SECONDS)
            again = []
            for tenant_id, (released, left) in zip(batch, pipe.execute()):
                total += int(released)
                if int(released) == 500:
                    again.append(tenant_id)
                elif int(left) == 0 and int(registered[tenant_id]) < at:
                    client.eval(FORGET, 1, keyspace.TENANTS, tenant_id, registered[tenant_id])
            tenants += again
        return total

    def open_holds(self, client: Any = None) -> int:
        """How many holds have a lease (requests in flight, or whose process died and the reaper has yet to see)."""
        client = client or self.sync_client()
        tenants = [int(t) for t in client.hkeys(keyspace.TENANTS)]
        pipe = client.pipeline(transaction=False)
        for tenant_id in tenants:
            pipe.zcard(keyspace.leases(tenant_id))
        return sum(int(n) for n in pipe.execute()) if tenants else 0


_backend: Backend | None = None


def backend() -> Backend:
    global _backend
    if _backend is None:
        url = settings.TOLLGATE_MONEY_REDIS_URL
        _backend = RedisBackend(url) if url else DatabaseBackend()
    return _backend


def reset_backend() -> None:
    """Drop the chosen backend (tests switch settings)."""
    global _backend
    _backend = None


def reap_expired() -> int:
    return backend().reap(timezone.now())
