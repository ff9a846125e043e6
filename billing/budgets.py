"""Budgets: which apply to a request, their calendar periods, and the database way of holding money.

A budget's spend in a period is the ledger's cost of that period plus the reservations still open. Each
period has its own running total (in Redis when configured, else a BudgetPeriod row), created from the
ledger the first time the period is used: a new period starts from what the ledger holds, which is
nothing, so no job ever resets anything.
"""

from __future__ import annotations

import re
import time
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Q, Sum, Value, When
from django.utils import timezone

from accounts.models import ApiKey

from . import rollups, scopes
from .models import (PICOS_PER_MICRO, Budget, BudgetPeriod, Reservation, UsageRecord, UsageRollup, micros_to_dollars,
                     picos_to_micros_up)
from .tags import needle

LIFETIME_START = datetime(2000, 1, 1, tzinfo=UTC)
CENTS = Decimal("0.01")


def usd(micros: int) -> str:
    """$1.50 for whole cents; every digit down to the micro-dollar otherwise ($0.0099, $0.000004), never rounded."""
    amount = micros_to_dollars(abs(micros))
    cents = amount.quantize(CENTS)
    return f"{'-' if micros < 0 else ''}${cents if cents == amount else f'{amount.normalize():f}'}"


@dataclass(frozen=True)
class BudgetSpec:
    """What the gate needs of one budget, kept in memory per process."""

    id: int
    name: str
    tenant_id: int
    key_id: int | None
    limit_micros: int
    period: str
    hard: bool
    zone: str
    # Narrower scopes (billing/scopes.py): the budget covers the requests matching every one that is set.
    project_id: int | None = None
    model: str = ""  # a public model name or glob
    tag: str = ""
    end_user: str = ""
    label: str = ""  # the scope in words, "model gpt-4o*, tag team:x", when narrower than the tenant or the key
    matcher: re.Pattern[str] | None = field(default=None, compare=False, repr=False)  # the model glob, compiled

    @property
    def scope(self) -> str:
        return "key" if self.key_id else "tenant"

    @property
    def narrow(self) -> bool:
        return self.project_id is not None or bool(self.model or self.tag or self.end_user)

    def covers(self, key_id: int | None, project_id: int | None, model: str, tags: str, end_user: str) -> bool:
        """Whether a request of the key and project, to the canonical public model, with the tags (stored form) and
        end user, is one this budget counts."""
        return ((self.key_id is None or self.key_id == key_id)
                and (self.project_id is None or self.project_id == project_id)
                and (not self.model or self.covers_model(model))
                and (not self.tag or needle(self.tag) in tags)
                and (not self.end_user or self.end_user == end_user))

    def covers_model(self, model: str) -> bool:
        return self.matcher.fullmatch(model) is not None if self.matcher else self.model == model


@dataclass(frozen=True)
class BudgetStatus:
    starts_at: datetime
    spent_micros: int  # a started micro-dollar counted whole, as the gate counts it
    reserved_micros: int
    limit_micros: int
    spent_picos: int | None = None  # exact, when known

    @property
    def remaining_micros(self) -> int:
        return self.limit_micros - self.spent_micros - self.reserved_micros


def period_bounds(period: str, zone: str, now: datetime) -> tuple[datetime, datetime | None]:
    """Return the start and end (UTC) of the calendar period containing ``now`` in the tenant's zone."""
    if period == Budget.Period.LIFETIME:
        return LIFETIME_START, None
    tz = zoneinfo.ZoneInfo(zone)
    local = now.astimezone(tz)
    day = local.date()
    if period == Budget.Period.WEEK:
        first, last = day - timedelta(days=day.weekday()), day - timedelta(days=day.weekday()) + timedelta(days=7)
    elif period == Budget.Period.MONTH:
        first = day.replace(day=1)
        last = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
    else:
        first, last = day, day + timedelta(days=1)
    # Midnight in the zone, whatever its UTC offset that day (DST changes move it, not the calendar).
    start = datetime(first.year, first.month, first.day, tzinfo=tz).astimezone(UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=tz).astimezone(UTC)
    return start, end


def spec_of(budget: Budget) -> BudgetSpec:
    narrow = budget.project_id is not None or bool(budget.model or budget.tag or budget.end_user)
    return BudgetSpec(id=budget.pk, name=str(budget), tenant_id=budget.tenant_id, key_id=budget.key_id,
                      limit_micros=budget.amount_micros, period=budget.period, hard=budget.hard,
                      zone=budget.tenant.timezone, project_id=budget.project_id, model=budget.model, tag=budget.tag,
                      end_user=budget.end_user, label=budget.scope_label if narrow else "",
                      matcher=scopes.model_matcher(budget.model) if budget.model else None)


@dataclass(frozen=True)
class Table:
    by_tenant: dict[int, tuple[BudgetSpec, ...]]
    loaded_at: float
    # Tenants with a budget narrower than a key (project, model, tag, user), and those with a model budget: the
    # common tenant has neither, and its requests pay nothing for the narrower scopes.
    narrow: frozenset[int] = frozenset()
    modelled: frozenset[int] = frozenset()

    def applicable(self, tenant_id: int, key_id: int | None, project_id: int | None = None, model: str = "",
                   tags: str = "", end_user: str = "") -> tuple[BudgetSpec, ...]:
        """The budgets a request counts against: the tenant's, its key's, and the narrower ones it matches."""
        if tenant_id not in self.narrow:
            return tuple(b for b in self.by_tenant.get(tenant_id, ()) if b.key_id is None or b.key_id == key_id)
        return tuple(b for b in self.by_tenant.get(tenant_id, ()) if b.covers(key_id, project_id, model, tags, end_user))

    def has_model_budgets(self, tenant_id: int) -> bool:
        return tenant_id in self.modelled


def load_table() -> Table:
    by_tenant: dict[int, list[BudgetSpec]] = {}
    budgets = Budget.objects.filter(is_active=True, tenant__is_active=True).select_related("tenant", "key", "project")
    for budget in budgets.order_by("pk"):
        by_tenant.setdefault(budget.tenant_id, []).append(spec_of(budget))
    specs = [spec for tenant in by_tenant.values() for spec in tenant]
    return Table(by_tenant={k: tuple(v) for k, v in by_tenant.items()}, loaded_at=time.monotonic(),
                 narrow=frozenset(s.tenant_id for s in specs if s.narrow),
                 modelled=frozenset(s.tenant_id for s in specs if s.model))


def key_lineage(key_id: int) -> list[int]:
    """The key and every key it replaced by rotation: a key budget moves to the new key with its spend."""
    ids = [key_id]
    while previous := ApiKey.objects.filter(pk=ids[-1]).values_list("rotated_from_id", flat=True).first():
        ids.append(previous)
    return ids


def ledger_spent(spec: BudgetSpec, starts_at: datetime, until: datetime | None = None) -> int:
    """The exact cost, in pico-dollars, the ledger holds for the budget's scope since the period started."""
    rows = UsageRecord.objects.filter(tenant_id=spec.tenant_id, created_at__gte=starts_at)
    if spec.narrow:
        rows = rows.filter(scopes.ledger_q(project_id=spec.project_id, model=spec.model, tag=spec.tag,
                                           end_user=spec.end_user))
    if spec.key_id:
        rows = rows.filter(key_id__in=key_lineage(spec.key_id))
    if until is not None:
        rows = rows.filter(created_at__lt=until)
    spent = int(rows.aggregate(total=Sum("cost_picos"))["total"] or 0)
    pruned = rollups.pruned_before()
    if pruned is not None and starts_at < pruned:
        # Older rows were pruned (only ever more than 62 days back: lifetime budgets); their days are rolled up.
        # Rollups keep the project and the model, not tags or users: Budget.clean refuses a lifetime budget on those.
        days = UsageRollup.objects.filter(granularity="day", tenant_id=spec.tenant_id, bucket__gte=starts_at,
                                          bucket__lt=min(pruned, until) if until else pruned)
        if spec.narrow:
            days = days.filter(scopes.ledger_q(project_id=spec.project_id, model=spec.model, tag="", end_user="",
                                               model_field="model", rollup=True))
        if spec.key_id:
            days = days.filter(key_id__in=key_lineage(spec.key_id))
        spent += int(days.aggregate(total=Sum("cost_picos"))["total"] or 0)
    return spent


def status(budget: Budget, *, now: datetime | None = None) -> BudgetStatus:
    """This period's spent, reserved and limit, from wherever the running totals are kept."""
    from . import holds

    spec = spec_of(budget)
    starts_at, _ = period_bounds(spec.period, spec.zone, now or timezone.now())
    spent, reserved = holds.backend().exact_totals(spec, starts_at)
    return BudgetStatus(starts_at=starts_at, spent_micros=picos_to_micros_up(spent), reserved_micros=reserved,
                        limit_micros=spec.limit_micros, spent_picos=spent)


# --- The database way: used when Redis is not configured (SQLite serializes, PostgreSQL locks rows).


@dataclass(frozen=True)
class Check:
    """One budget's state as a reservation saw it."""

    spec: BudgetSpec
    starts_at: datetime
    spent_micros: int
    reserved_micros: int

    def as_json(self) -> dict[str, object]:
        return {"budget": self.spec.id, "name": self.spec.name, "scope": self.spec.scope, "hard": self.spec.hard,
                "period_start": self.starts_at.isoformat(), "spent_micros": self.spent_micros,
                "reserved_micros": self.reserved_micros, "limit_micros": self.spec.limit_micros}


def db_period(spec: BudgetSpec, starts_at: datetime) -> BudgetPeriod:
    """Return the locked running total of the period, created from the ledger on first use."""
    period = BudgetPeriod.objects.select_for_update().filter(budget_id=spec.id, starts_at=starts_at).first()
    if period is None:
        micros, remainder = divmod(ledger_spent(spec, starts_at), PICOS_PER_MICRO)
        BudgetPeriod.objects.bulk_create(
            [BudgetPeriod(budget_id=spec.id, starts_at=starts_at, spent_micros=micros, spent_remainder_picos=remainder)],
            ignore_conflicts=True,  # another process created it meanwhile: use theirs
        )
        period = BudgetPeriod.objects.select_for_update().get(budget_id=spec.id, starts_at=starts_at)
    return period


def db_reserve(request_id: str, specs: tuple[BudgetSpec, ...], amount: int, overdraft: int,
               now: datetime) -> tuple[bool, list[Check], list[int]]:
    """Hold ``amount`` on every budget, or on none. Returns (admitted, checks, held period ids).

    An admitted request gets a hold even when ``amount`` is 0 (an unpriced model, a free prompt): it must still
    settle its cost on the budgets, or a hard budget could be spent past its limit by requests it never saw.
    """
    with transaction.atomic():
        periods = [(spec, db_period(spec, period_bounds(spec.period, spec.zone, now)[0])) for spec in specs]
        checks = [Check(spec, p.starts_at, picos_to_micros_up(p.spent_picos), p.reserved_micros) for spec, p in periods]
        admitted = all(not c.spec.hard or c.spent_micros + c.reserved_micros + amount <= c.spec.limit_micros + overdraft
                       for c in checks)
        if not admitted or not specs:
            return admitted, checks, []
        ids = [p.pk for _, p in periods]
        if amount:
            BudgetPeriod.objects.filter(pk__in=ids).update(reserved_micros=F("reserved_micros") + amount)
        expires = now + timedelta(seconds=settings.TOLLGATE_RESERVATION_LEASE_SECONDS)
        Reservation.objects.create(request_id=request_id, amount_micros=amount, periods=ids, expires_at=expires)
        return True, checks, ids


def db_settle(request_id: str, period_ids: list[int], cost: int, now: datetime | None = None) -> bool:
    """Turn a hold into the actual cost (pico-dollars), once. Returns whether the cost was added.

    A hold the reaper already released adds the cost alone; a hold settled already adds nothing. Its row stays,
    marked settled, until db_reap prunes it.
    """
    if not period_ids:
        return False
    now = now or timezone.now()
    held = Reservation.objects.select_for_update().filter(request_id=request_id).first()
    if held is None:
        # No row (pruned, or never written): a released marker, so that settling this one again adds nothing.
        Reservation.objects.bulk_create([Reservation(
            request_id=request_id, amount_micros=0, periods=period_ids, expires_at=now,
            state=Reservation.State.RELEASED, closed_at=now)], ignore_conflicts=True)
        held = Reservation.objects.select_for_update().get(request_id=request_id)
    if held.state == Reservation.State.SETTLED:
        return False
    release = held.amount_micros if held.state == Reservation.State.OPEN else 0
    Reservation.objects.filter(pk=held.pk).update(state=Reservation.State.SETTLED, closed_at=now)
    add_spend(period_ids, cost, release=release)
    return True


def db_renew(request_ids: list[str], expires_at: datetime) -> int:
    """Move the lease of the holds still open to ``expires_at``. Returns how many were renewed."""
    return Reservation.objects.filter(request_id__in=request_ids, state=Reservation.State.OPEN).update(
        expires_at=expires_at)


def add_spend(period_ids: list[int], cost: int, *, release: int = 0) -> None:
    """Add ``cost`` pico-dollars to the periods' spend, carrying whole micro-dollars out of the remainder."""
    micros, rest = divmod(cost, PICOS_PER_MICRO)
    # Both columns are computed from the old remainder, in one UPDATE: no read, no race.
    carries = Q(spent_remainder_picos__gte=PICOS_PER_MICRO - rest)
    carry = Case(When(carries, then=Value(1)), default=Value(0))
    BudgetPeriod.objects.filter(pk__in=period_ids).update(
        spent_micros=F("spent_micros") + micros + carry,
        spent_remainder_picos=F("spent_remainder_picos") + rest - carry * PICOS_PER_MICRO,
        reserved_micros=F("reserved_micros") - release)


MARKER_DAYS = 2  # how long a closed hold is remembered: a settlement replayed later than this would add again


def db_reap(now: datetime) -> int:
    """Release the holds whose lease ran out (their process died), keeping each as a released marker, and prune
    markers older than MARKER_DAYS. Returns how many holds were released."""
    released = 0
    expired = Reservation.objects.filter(state=Reservation.State.OPEN, expires_at__lt=now)
    for held in expired.order_by("pk")[:1000]:
        with transaction.atomic():
            if Reservation.objects.filter(pk=held.pk, state=Reservation.State.OPEN).update(
                    state=Reservation.State.RELEASED, closed_at=now):
                if held.amount_micros:
                    BudgetPeriod.objects.filter(pk__in=held.periods).update(
                        reserved_micros=F("reserved_micros") - held.amount_micros)
                released += 1
    stale = Reservation.objects.filter(closed_at__lt=now - timedelta(days=MARKER_DAYS))
    while ids := list(stale.values_list("pk", flat=True)[:5000]):
        Reservation.objects.filter(pk__in=ids).delete()
    return released


def db_totals(spec: BudgetSpec, starts_at: datetime) -> tuple[int, int]:
    """(spent in pico-dollars, reserved in micro-dollars) of the period."""
    period = BudgetPeriod.objects.filter(budget_id=spec.id, starts_at=starts_at).first()
    if period is None:
        return ledger_spent(spec, starts_at), 0
    return period.spent_picos, period.reserved_micros
