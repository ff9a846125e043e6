"""Small server-side SVG bar charts: no JavaScript library, nothing fetched by the browser."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, timedelta

from django.db.models import Sum
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from .models import UsageRollup


def bars(points: Sequence[tuple[date, int]], *, label: str, fmt: Callable[[int], str], height: int = 60,
         step: int = 10) -> SafeString:
    """One bar per day; each bar's tooltip names its day and value."""
    top = max((value for _, value in points), default=0)
    width = len(points) * step
    rects = format_html_join("", '<rect x="{}" y="{}" width="{}" height="{}" fill="#2f6f8f"><title>{}: {}</title></rect>', (
        (i * step, height - h, step - 2, h, day.isoformat(), fmt(value))
        for i, (day, value) in enumerate(points) for h in [max(1, round(value * height / top)) if value else 0]))
    return format_html('<svg class="chart" role="img" aria-label="{}" width="{}" height="{}" viewBox="0 0 {} {}">{}</svg>',
                       label, width, height, width, height, rects)


def daily(tenant_id: int, field: str, *, days: int, today: date, **filters: object) -> list[tuple[date, int]]:
    """The sum of a rollup field per UTC day over the last ``days`` days, zero-filled."""
    first = today - timedelta(days=days - 1)
    rows = (UsageRollup.objects.filter(tenant_id=tenant_id, granularity="day", bucket__date__gte=first, **filters)
            .values("bucket__date").annotate(total=Sum(field)))
    by_day = {row["bucket__date"]: row["total"] or 0 for row in rows}
    return [(first + timedelta(days=i), by_day.get(first + timedelta(days=i), 0)) for i in range(days)]
