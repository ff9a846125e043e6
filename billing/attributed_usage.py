"""Usage by tag or end user: read from the ledger, since the rollups keep neither.

A usage report filtered by a tag or an end user sums the ledger rows themselves, into the same rows the rollup report
gives (billing/usage.report), so the API shows both alike. The ledger holds only the days the nightly prune has not
deleted yet (RollupState.pruned_before): a range reaching before that is refused rather than answered short, and a
range is at most LEDGER_MAX_DAYS long, as a key's own ledger totals are.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.db.models import Count, F, IntegerField, Q, QuerySet, Sum, Value
from django.db.models.functions import TruncDay, TruncHour

from . import rollups, tags, usage
from .models import UsageRecord

LEDGER_MAX_DAYS = usage.KEY_MAX_DAYS


def check_range(days: usage.DateRange, *, pruned: datetime | None) -> None:
    """Raise BadQuery when the ledger cannot answer for every day of ``days``."""
    if days.days > LEDGER_MAX_DAYS:
        raise usage.BadQuery(f"With tag or user, a range covers at most {LEDGER_MAX_DAYS} days (they are read from "
                             "the ledger).", param="end")
    if pruned is not None and days.starts_at < pruned:
        raise usage.BadQuery(f"Tags and end users are kept on the ledger, which holds requests from "
                             f"{pruned.astimezone(UTC).date()} on: start on that day or later.", param="start")


def report(rows: QuerySet[UsageRecord], *, granularity: str, groups: tuple[str, ...], days: usage.DateRange,
           tag: str | None = None, end_user: str | None = None, key_id: int | None = None, model: str | None = None,
           provider: str | None = None, project_ids: list[int] | None = None) -> QuerySet[UsageRecord]:
    """Sum the ledger rows in ``rows`` (already scoped to the caller's tenants) per bucket and group, as
    billing/usage.report sums the rollups. Raises BadQuery for a range the ledger no longer holds."""
    check_range(days, pruned=rollups.pruned_before())
    rows = rows.filter(created_at__gte=days.starts_at, created_at__lt=days.ends_at)
    if tag is not None:
        rows = rows.filter(tags__contains=tags.needle(tag))
    if end_user is not None:
        rows = rows.filter(end_user=end_user)
    rows = usage.narrowed(rows, key_id=key_id, project_ids=project_ids, model_field="public_model", model=model,
                          provider=provider)
    trunc = TruncHour if granularity == "hour" else TruncDay
    columns = [column for name in groups for column in usage.GROUP_COLUMNS[name]]
    none = Value(None, output_field=IntegerField())
    return (rows.annotate(bucket=trunc("created_at", tzinfo=UTC), model=F("public_model"))
            .values("bucket", *columns)
            .annotate(n=Count("id"), failed=Count("id", filter=Q(end_reason__in=rollups.ERRORS)),
                      refused=Count("id", filter=Q(end_reason=UsageRecord.EndReason.REJECTED)),
                      prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cost=Sum("cost_picos"),
                      # Percentiles come only from a single rollup; a ledger sum has none.
                      rollups=Value(0, output_field=IntegerField()),
                      **{f"max_{name}": none for name in usage.PERCENTILES})
            .order_by("bucket", *columns))
