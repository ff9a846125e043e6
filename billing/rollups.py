"""Usage rollups per tenant, key, project, model, provider and UTC hour / day, read incrementally from the ledger.

Each run reads the ledger rows written since the last one (by id, the watermark), finds the hours and days
they fall in, rebuilds those hours whole from the ledger, and derives those days from their hours. A late row (one
written after its window was rolled up) therefore just makes its hour and day be rebuilt, and rebuilding a window
twice gives the same rows. A run reads the new rows' hours from the ledger, never a whole day of it.

Hour rollups are exact. Day rollups sum their hours' counts, tokens and cost exactly; their percentiles come from
the hours' latency sketches (billing/sketches.py): within 1 % of the exact figure, exact under 50 ms.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Aggregate, Count, IntegerField, Max, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from . import sketches
from .models import RollupState, UsageRecord, UsageRollup

logger = logging.getLogger(__name__)

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
ERRORS = ("upstream_error", "upstream_cut", "timeout")
CHUNK = 50_000  # ledger rows read per run at most; a backlog is worked off over several runs
# Ids are taken when a row is inserted and seen when it commits; a row committed out of id order is still
# read if it is within this many ids of the watermark.
ID_OVERLAP = 1_000
STATE = "usage"


class Percentile(Aggregate):
    """PostgreSQL's exact percentile_disc; SQLite gets the same figure in Python (see discrete)."""

    function = "percentile_disc"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = IntegerField()

    def __init__(self, expression: str, fraction: float, **extra: object) -> None:
        super().__init__(expression, fraction=fraction, **extra)


@dataclass
class RollupRun:
    rows_read: int
    hours: int
    days: int
    rollups: int


def roll_up(*, now: datetime | None = None, chunk: int = CHUNK) -> RollupRun:
    """Roll up the ledger rows written since the last run. Runs one at a time (the state row is locked)."""
    with transaction.atomic():
        state = lock_state()
        start_id = max(state.last_record_id - ID_OVERLAP, 0)
        after = UsageRecord.objects.filter(id__gt=state.last_record_id).order_by("id").values_list("id", flat=True)
        newest = next(iter(after[chunk - 1:chunk]), None) or UsageRecord.objects.aggregate(newest=Max("id"))["newest"] or 0
        if newest <= state.last_record_id:
            return RollupRun(0, 0, 0, 0)
        read = UsageRecord.objects.filter(id__gt=start_id, id__lte=newest)
        hours = sorted({h.astimezone(UTC) for h in
                        read.annotate(hour=TruncHour("created_at", tzinfo=UTC)).values_list("hour", flat=True).distinct()})
        days = sorted({h.replace(hour=0) for h in hours})
        written = sum(rebuild(UsageRollup.Granularity.HOUR, hour, hour + HOUR) for hour in hours)
        written += sum(rebuild(UsageRollup.Granularity.DAY, day, day + DAY) for day in days)
        rows = UsageRecord.objects.filter(id__gt=state.last_record_id, id__lte=newest).count()
        state.last_record_id = newest
        state.save(update_fields=["last_record_id", "updated_at"])
    return RollupRun(rows_read=rows, hours=len(hours), days=len(days), rollups=written)


def lock_state() -> RollupState:
    RollupState.objects.get_or_create(name=STATE)
    return RollupState.objects.select_for_update().get(name=STATE)


Group = tuple[int, int | None, int | None, str, str]
GROUP = ("tenant_id", "key_id", "project_id", "public_model", "provider")
LATENCY = {"latency_p50_ms": 0.5, "latency_p95_ms": 0.95, "latency_p99_ms": 0.99}
TTFB = {"ttfb_p50_ms": 0.5, "ttfb_p95_ms": 0.95}


SKETCHED = {"latency": "latency_ms", "ttfb": "ttfb_ms"}
SUMMED = ("requests", "errors", "rejected", "prompt_tokens", "completion_tokens", "cost_picos")


def rebuild(granularity: str, start: datetime, end: datetime) -> int:
    """Replace the rollups of one window: an hour from the ledger, a day from its hours. Returns how many were written."""
    if granularity == UsageRollup.Granularity.DAY:
        return derive_day(start)
    rows = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
    answered = Q(end_reason__in=["complete", "client_gone", *ERRORS])  # latency of rejections says nothing
    first_byte = Q(ttfb_ms__isnull=False)
    groups = rows.values(*GROUP).annotate(
        requests=Count("id"),
        errors=Count("id", filter=Q(end_reason__in=ERRORS)),
        rejected=Count("id", filter=Q(end_reason="rejected")),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        cost=Sum("cost_picos"),
    ).order_by()
    sketched: dict[Group, dict[str, sketches.Sketch]] = defaultdict(lambda: {name: {} for name in SKETCHED})
    if connection.vendor == "postgresql":
        groups = groups.annotate(
            **{name: Percentile("latency_ms", fraction, filter=answered) for name, fraction in LATENCY.items()},
            **{name: Percentile("ttfb_ms", fraction, filter=first_byte) for name, fraction in TTFB.items()})
        percentiles: dict[Group, dict[str, int]] | None = None
        for name, field, which in (("latency", "latency_ms", answered), ("ttfb", "ttfb_ms", first_byte)):
            bins = rows.filter(which).annotate(bin=sketches.Bin(field)).values(*GROUP, "bin").annotate(n=Count("id"))
            for b in bins.order_by():
                sketched[group_of(b)][name][str(b["bin"])] = b["n"]
    else:
        percentiles = defaultdict(dict)
        for name, field, which, fractions in (("latency", "latency_ms", answered, LATENCY),
                                              ("ttfb", "ttfb_ms", first_byte, TTFB)):
            for group, ordered in group_values(rows.filter(which), field).items():
                percentiles[group].update({p: discrete(ordered, fraction) for p, fraction in fractions.items()})
                sketched[group][name] = sketches.of(ordered)
    rollups = []
    for g in groups:
        group = group_of(g)
        figures = g if percentiles is None else percentiles.get(group, {})
        rollups.append(UsageRollup(
            granularity=granularity, bucket=start, tenant_id=g["tenant_id"], key_id=g["key_id"],
            project_id=g["project_id"], model=g["public_model"], provider=g["provider"], requests=g["requests"],
            errors=g["errors"], rejected=g["rejected"],
            prompt_tokens=g["prompt"] or 0, completion_tokens=g["completion"] or 0, cost_picos=g["cost"] or 0,
            sketch=sketched[group], **{name: figures.get(name) for name in (*LATENCY, *TTFB)}))
    return replace(granularity, start, rollups)


def replace(granularity: str, start: datetime, rollups: list[UsageRollup]) -> int:
    UsageRollup.objects.filter(granularity=granularity, bucket=start).delete()
    UsageRollup.objects.bulk_create(rollups)
    return len(rollups)


def derive_day(start: datetime) -> int:
    """Replace a day's rollups with the sums of its hour rollups; percentiles from the merged hour sketches."""
    hours = UsageRollup.objects.filter(granularity=UsageRollup.Granularity.HOUR, bucket__gte=start,
                                       bucket__lt=start + DAY)
    refresh_unsketched(hours)
    days: dict[Group, UsageRollup] = {}
    merged: dict[Group, dict[str, sketches.Sketch]] = {}
    bounds: dict[Group, dict[str, list[int]]] = {}
    for hour in hours.order_by("bucket", "pk"):
        group = (hour.tenant_id, hour.key_id, hour.project_id, hour.model, hour.provider)
        day = days.get(group)
        if day is None:
            day = days[group] = UsageRollup(granularity=UsageRollup.Granularity.DAY, bucket=start, tenant_id=hour.tenant_id,
                                            key_id=hour.key_id, project_id=hour.project_id, model=hour.model,
                                            provider=hour.provider)
            merged[group], bounds[group] = {name: {} for name in SKETCHED}, defaultdict(list)
        for field in SUMMED:
            setattr(day, field, getattr(day, field) + getattr(hour, field))
        for name in SKETCHED:
            sketches.merge(merged[group][name], (hour.sketch or {}).get(name, {}))
        for name in (*LATENCY, *TTFB):
            if getattr(hour, name) is not None:
                bounds[group][name].append(getattr(hour, name))
    for group, day in days.items():
        for name, fraction in (*LATENCY.items(), *TTFB.items()):
            seen = bounds[group][name]
            if seen:
                sketch = merged[group]["latency" if name in LATENCY else "ttfb"]
                # An hour rolled up before sketches existed, whose ledger rows were pruned, has none: its largest
                # percentile then stands in, an upper bound of the day's.
                value = sketches.quantile(sketch, fraction, low=min(seen), high=max(seen))
                setattr(day, name, max(seen) if value is None else value)
    return replace(UsageRollup.Granularity.DAY, start, list(days.values()))


def refresh_unsketched(hours: object) -> None:
    """Rebuild from the ledger the hours rolled up before sketches existed, unless their rows were pruned."""
    cutoff = pruned_before()
    stale = hours.filter(sketch__isnull=True).values_list("bucket", flat=True).distinct()  # type: ignore[attr-defined]
    for bucket in sorted(set(stale)):
        if cutoff is None or bucket >= cutoff:
            rebuild(UsageRollup.Granularity.HOUR, bucket, bucket + HOUR)


def group_values(rows: object, field: str) -> dict[Group, list[int]]:
    """Each group's values of the field, smallest first."""
    values: dict[Group, list[int]] = defaultdict(list)
    for *group, value in rows.values_list(*GROUP, field).order_by(field):  # type: ignore[attr-defined]
        values[tuple(group)].append(value)  # type: ignore[arg-type]
    return values


def group_of(row: dict[str, object]) -> Group:
    return tuple(row[name] for name in GROUP)  # type: ignore[return-value]


def discrete(ordered: list[int], fraction: float) -> int:
    """percentile_disc in Python: the smallest value with at least that fraction of the group at or below it."""
    index = max(0, -(-int(fraction * 1000) * len(ordered) // 1000) - 1)  # ceil(fraction * n) - 1, in integers
    return ordered[index]


@dataclass
class PruneRun:
    deleted: int
    before: datetime | None


def prune(*, retention_days: int, now: datetime | None = None, batch: int = 5_000) -> PruneRun:
    """Delete ledger rows older than the retention that the rollups already hold, a batch per transaction.

    Only whole UTC days are pruned, and only rows at or below the rollup watermark, so every deleted row's
    cost and tokens stay in a day rollup (and budgets read them from there; see billing.budgets.ledger_spent).
    """
    if retention_days <= 0:
        return PruneRun(0, None)
    now = now or timezone.now()
    before = (now - timedelta(days=retention_days)).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    state = RollupState.objects.get_or_create(name=STATE)[0]
    rolled = UsageRecord.objects.filter(created_at__lt=before, id__lte=state.last_record_id - ID_OVERLAP)
    deleted = 0
    while True:
        with transaction.atomic():
            ids = list(rolled.order_by("id").values_list("id", flat=True)[:batch])
            if ids:
                deleted += UsageRecord.objects.filter(id__in=ids).delete()[0]
        if len(ids) < batch:
            break
    if deleted or state.pruned_before is None or state.pruned_before < before:
        # Recorded only once everything older is gone, so readers can trust it.
        if not UsageRecord.objects.filter(created_at__lt=before).exists():
            RollupState.objects.filter(name=STATE).update(pruned_before=before)
    return PruneRun(deleted, before)


def pruned_before() -> datetime | None:
    """Ledger rows before this moment (a UTC midnight) were deleted; their spend is in the day rollups."""
    return RollupState.objects.filter(name=STATE).values_list("pruned_before", flat=True).first()
