"""Usage read-outs: one key's totals over whole UTC days, the budgets that apply to it, and rollup reports.

Where a key's totals come from: the ledger (UsageRecord, read through its key + created_at index) for the days it
still holds, and the day rollups for the days the nightly prune deleted (before RollupState.pruned_before, always a
UTC midnight, so no day is split between the two). The ledger is exact to the last request written; the rollups lag
it by up to one rollup run, so they are read only where the ledger has nothing left. Reports over many tenants and
keys (the management API) read the rollups alone: they never scan the ledger, and they hold pruned days too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import Count, Max, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from . import budgets, rollups
from .models import PICOS_PER_MICRO, Budget, UsageRecord, UsageRollup, picos_to_micros_up

# A key's totals are summed from the ledger on the database thread that /v1 writes its rows with: a quarter
# bounds that work. Longer histories come from the management API, which reads the rollups.
KEY_MAX_DAYS = 92
REPORT_MAX_DAYS = 366
REPORT_DEFAULT_DAYS = 30
GROUPS = ("tenant", "key", "project", "model", "provider")
DEFAULT_GROUPS = ("tenant", "key", "model")
# What each group_by name selects from a rollup: the tenant by slug, a key by id and prefix, a project by id and
# slug (a slug is unique only within its tenant).
GROUP_COLUMNS = {"tenant": ("tenant__slug",), "key": ("key_id", "key__prefix"), "project": ("project_id", "project__slug"),
                 "model": ("model",), "provider": ("provider",)}
PERCENTILES = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "ttfb_p50_ms", "ttfb_p95_ms")


class BadQuery(ValueError):
    """A usage query that cannot be answered as asked; ``param`` names the parameter at fault."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class DateRange:
    """Whole UTC days from ``first`` to ``last``, both included."""

    first: date
    last: date

    @property
    def starts_at(self) -> datetime:
        return datetime.combine(self.first, time.min, tzinfo=UTC)

    @property
    def ends_at(self) -> datetime:
        """The UTC midnight after ``last``: the range is [starts_at, ends_at)."""
        return datetime.combine(self.last, time.min, tzinfo=UTC) + timedelta(days=1)

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


def today() -> date:
    return timezone.now().astimezone(UTC).date()


def date_range(first: date | None, last: date | None, *, max_days: int, default_days: int = 1,
               now: datetime | None = None) -> DateRange:
    """Return the days asked for: ``last`` defaults to today (UTC), ``first`` to ``default_days`` days up to ``last``.
    Raises BadQuery for a range that ends before it starts, is longer than ``max_days`` or leaves the calendar."""
    end_param = "end" if last else "start"  # a missing end is today: a start after it is the start's fault
    last = last or (now or timezone.now()).astimezone(UTC).date()
    if last == date.max:
        raise BadQuery("end must be before 9999-12-31.", param="end")
    if first is None:
        first = last - timedelta(days=min(default_days - 1, (last - date.min).days))  # not before year 1
    if last < first:
        raise BadQuery(f"end ({last}) is before start ({first}).", param=end_param)
    span = DateRange(first, last)
    if span.days > max_days:
        raise BadQuery(f"The range covers {span.days} days; ask for at most {max_days} at a time.", param=end_param)
    return span


def month_so_far(now: datetime | None = None) -> DateRange:
    """The current UTC calendar month, from its first day to today."""
    current = (now or timezone.now()).astimezone(UTC).date()
    return DateRange(current.replace(day=1), current)


@dataclass(frozen=True)
class Totals:
    requests: int = 0
    refusals: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_picos: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class KeyUsage:
    days: DateRange
    totals: Totals
    daily: list[tuple[date, Totals]]  # only the days that had requests, oldest first
    from_rollups_before: date | None  # days before this one were read from the day rollups (the ledger is pruned)


def key_usage(*, tenant_id: int, key_id: int, days: DateRange) -> KeyUsage:
    """Return the key's requests, refusals, tokens and exact cost over ``days``, in total and per UTC day."""
    pruned = rollups.pruned_before()
    split = days.starts_at if pruned is None else min(max(pruned, days.starts_at), days.ends_at)
    per_day: dict[date, Totals] = {}
    if split > days.starts_at:
        for day, totals in rolled_up_days(tenant_id, key_id, days.starts_at, split):
            per_day[day] = per_day.get(day, Totals()) + totals
    for day, totals in ledger_days(key_id, split, days.ends_at):
        per_day[day] = per_day.get(day, Totals()) + totals
    daily = sorted(per_day.items())
    total = sum((t for _, t in daily), Totals())
    return KeyUsage(days=days, totals=total, daily=daily,
                    from_rollups_before=split.date() if split > days.starts_at else None)


def ledger_days(key_id: int, starts_at: datetime, ends_at: datetime) -> Iterable[tuple[date, Totals]]:
    if starts_at >= ends_at:
        return []
    rows = (UsageRecord.objects.filter(key_id=key_id, created_at__gte=starts_at, created_at__lt=ends_at)
            .annotate(day=TruncDate("created_at", tzinfo=UTC)).values("day")
            .annotate(n=Count("id"), refused=Count("id", filter=Q(end_reason=UsageRecord.EndReason.REJECTED)),
                      prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cost=Sum("cost_picos"))
            .order_by("day"))
    return [(as_date(r["day"]), totals_of(r)) for r in rows]


def rolled_up_days(tenant_id: int, key_id: int, starts_at: datetime, ends_at: datetime) -> Iterable[tuple[date, Totals]]:
    rows = (UsageRollup.objects.filter(granularity=UsageRollup.Granularity.DAY, tenant_id=tenant_id, key_id=key_id,
                                       bucket__gte=starts_at, bucket__lt=ends_at)
            .values("bucket").annotate(n=Sum("requests"), refused=Sum("rejected"), prompt=Sum("prompt_tokens"),
                                       completion=Sum("completion_tokens"), cost=Sum("cost_picos"))
            .order_by("bucket"))
    return [(r["bucket"].astimezone(UTC).date(), totals_of(r)) for r in rows]


def totals_of(row: dict[str, int | None]) -> Totals:
    return Totals(requests=int(row["n"] or 0), refusals=int(row["refused"] or 0), prompt_tokens=int(row["prompt"] or 0),
                  completion_tokens=int(row["completion"] or 0), cost_picos=int(row["cost"] or 0))


def as_date(value: date | datetime | str) -> date:
    # SQLite hands TruncDate back as text in some versions.
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(value)


@dataclass(frozen=True)
class BudgetState:
    """One budget's current period: exact spend, money held for requests in flight, and what is left."""

    budget: Budget
    starts_at: datetime
    ends_at: datetime | None  # None for a lifetime budget
    limit_micros: int
    spent_picos: int
    held_micros: int

    @property
    def scope(self) -> str:
        return "key" if self.budget.key_id else "tenant"

    @property
    def left_micros(self) -> int:
        """What the gate would still admit: a started micro-dollar of spend counts whole, as it does there."""
        return max(self.limit_micros - picos_to_micros_up(self.spent_picos) - self.held_micros, 0)


def key_budgets(*, tenant_id: int, key_id: int, project_id: int | None = None,
                now: datetime | None = None) -> list[BudgetState]:
    """Return the active budgets that may apply to the key's requests (its tenant's, its project's and its own, those
    narrowed to a model, tag or end user included) with this period's figures."""
    now = now or timezone.now()
    applicable = (Budget.objects.filter(tenant_id=tenant_id, is_active=True)
                  .filter(Q(key__isnull=True) | Q(key_id=key_id))
                  .filter(Q(project__isnull=True) | Q(project_id=project_id))
                  .select_related("tenant", "key", "project").order_by("id"))
    states = []
    for budget in applicable:
        state = budgets.status(budget, now=now)
        _, ends_at = budgets.period_bounds(budget.period, budget.tenant.timezone, now)
        states.append(BudgetState(budget=budget, starts_at=state.starts_at, ends_at=ends_at,
                                  limit_micros=state.limit_micros,
                                  spent_picos=state.spent_picos if state.spent_picos is not None
                                  else state.spent_micros * PICOS_PER_MICRO,
                                  held_micros=state.reserved_micros))
    return states


def parse_groups(value: str | None) -> tuple[str, ...]:
    """``tenant,key`` -> ("tenant", "key"); None -> the default grouping; "" -> no grouping (totals per bucket)."""
    if value is None:
        return DEFAULT_GROUPS
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in GROUPS]
    if unknown:
        raise BadQuery(f"group_by takes names among {', '.join(GROUPS)} separated by commas; "
                       f"{unknown[0][:40]!r} is not one.", param="group_by")
    return tuple(dict.fromkeys(names))


def narrowed(rows: QuerySet[Any], *, key_id: int | None, project_ids: list[int] | None, model_field: str,
             model: str | None, provider: str | None) -> QuerySet[Any]:
    """The rows (rollups or ledger rows, whose model column is ``model_field``) the usage filters given select."""
    if key_id is not None:
        rows = rows.filter(key_id=key_id)
    if project_ids is not None:
        rows = rows.filter(project_id__in=project_ids)
    if model is not None:
        rows = rows.filter(**{model_field: model})
    if provider is not None:
        rows = rows.filter(provider=provider)
    return rows


def report(rows: QuerySet[UsageRollup], *, granularity: str, groups: tuple[str, ...], days: DateRange,
           key_id: int | None = None, model: str | None = None, provider: str | None = None,
           project_ids: list[int] | None = None) -> QuerySet[UsageRollup]:
    """Sum the rollups in ``rows`` (already scoped to the caller's tenants) per bucket and group, oldest first.

    Each row holds the bucket, the group's columns (GROUP_COLUMNS), the sums and ``rollups``, how many rollup rows
    it adds up. Percentiles cannot be added up, so each is the rollup's own when the row is a single rollup.
    """
    rows = rows.filter(granularity=granularity, bucket__gte=days.starts_at, bucket__lt=days.ends_at)
    rows = narrowed(rows, key_id=key_id, project_ids=project_ids, model_field="model", model=model, provider=provider)
    columns = [column for name in groups for column in GROUP_COLUMNS[name]]
    return (rows.values("bucket", *columns)
            .annotate(n=Sum("requests"), failed=Sum("errors"), refused=Sum("rejected"), prompt=Sum("prompt_tokens"),
                      completion=Sum("completion_tokens"), cost=Sum("cost_picos"), rollups=Count("id"),
                      **{f"max_{name}": Max(name) for name in PERCENTILES})
            .order_by("bucket", *columns))
