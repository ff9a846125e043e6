"""Day rollups derive from hour rollups: sums exact, percentiles from merged latency sketches within 1 % (README, Usage
rollups), so a run reads the new rows' hours from the ledger and never the whole day."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Sum

from billing import rollups, sketches
from billing.models import UsageRecord, UsageRollup
from billing.rollups import discrete

from ..conftest import Party

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 11, 20, tzinfo=UTC)


def test_a_sketch_percentile_is_within_one_percent_and_exact_under_50_ms() -> None:
    rng = random.Random(7)
    for values in ([rng.randint(0, 49) for _ in range(500)], [int(rng.lognormvariate(6, 1.5)) for _ in range(5000)],
                   [rng.choice([1, 10_000, 600_000]) for _ in range(301)], [0], [3, 3, 3]):
        ordered = sorted(values)
        sketch = sketches.of(values)
        for fraction in (0.5, 0.95, 0.99):
            exact, estimate = discrete(ordered, fraction), sketches.quantile(sketch, fraction)
            assert estimate is not None
            assert abs(estimate - exact) <= max(sketches.ALPHA * exact, 0.5), (fraction, exact, estimate)
            if exact < 50:
                assert estimate == exact
    assert sketches.quantile({}, 0.5) is None


def add(party: Party, at: datetime, latency: int, ttfb: int | None, cost: int) -> UsageRecord:
    return UsageRecord(tenant=party.tenant, key=party.key, endpoint="chat", public_model="gpt-4o", provider="openai",
                       end_reason="complete", status_code=200, prompt_tokens=10, completion_tokens=latency % 7,
                       latency_ms=latency, ttfb_ms=ttfb, cost_picos=cost, created_at=at)


def test_day_percentiles_from_the_hours_are_within_one_percent_and_sums_are_exact(alice: Party) -> None:
    rng = random.Random(11)
    rows = []
    for hour in range(24):
        scale = 3 if hour in (9, 10) else 1  # a slow spell: the day is not one hour's distribution
        for i in range(60):
            at = DAY + timedelta(hours=hour, seconds=i * 59)
            rows.append(add(alice, at, int(rng.lognormvariate(5, 1)) * scale, rng.randint(5, 900) if i % 3 else None,
                            cost=1_000_003 + i))
    UsageRecord.objects.bulk_create(rows)
    rollups.roll_up()
    day = UsageRollup.objects.get(granularity="day", bucket=DAY, tenant=alice.tenant)
    latencies = sorted(r.latency_ms for r in rows)
    ttfbs = sorted(r.ttfb_ms for r in rows if r.ttfb_ms is not None)
    for name, values, fraction in [("latency_p50_ms", latencies, 0.5), ("latency_p95_ms", latencies, 0.95),
                                   ("latency_p99_ms", latencies, 0.99), ("ttfb_p50_ms", ttfbs, 0.5),
                                   ("ttfb_p95_ms", ttfbs, 0.95)]:
        exact = discrete(values, fraction)
        assert abs(getattr(day, name) - exact) <= max(sketches.ALPHA * exact, 0.5), (name, exact, getattr(day, name))
    ledger = UsageRecord.objects.aggregate(cost=Sum("cost_picos"), prompt=Sum("prompt_tokens"),
                                           completion=Sum("completion_tokens"))
    assert (day.requests, day.cost_picos, day.prompt_tokens, day.completion_tokens) == (
        len(rows), ledger["cost"], ledger["prompt"], ledger["completion"])
    assert day.sketch is None  # only hours keep one


def test_a_run_reads_the_new_rows_hours_not_the_day(alice: Party) -> None:
    UsageRecord.objects.bulk_create([add(alice, DAY + timedelta(hours=h), 100 + h, None, cost=1_000) for h in range(6)])
    rollups.roll_up()
    # The morning's ledger rows go (as if read once and never again); a new row arrives in the afternoon.
    UsageRecord.objects.filter(created_at__lt=DAY + timedelta(hours=6)).delete()
    add(alice, DAY + timedelta(hours=15), 40, 7, cost=5).save()
    run = rollups.roll_up()
    assert (run.rows_read, run.hours, run.days) == (1, 1, 1)
    day = UsageRollup.objects.get(granularity="day", bucket=DAY)
    assert (day.requests, day.cost_picos) == (7, 6_005)  # the morning comes from its hour rollups
    assert abs(day.latency_p50_ms - 102) <= 1 and (day.latency_p99_ms, day.ttfb_p50_ms) == (105, 7)  # clamped: exact


def test_hours_rolled_up_before_sketches_are_rebuilt_from_the_ledger_once(alice: Party) -> None:
    UsageRecord.objects.bulk_create([add(alice, DAY + timedelta(hours=h, minutes=m), 10 * h + m, None, cost=1)
                                     for h in range(3) for m in range(5)])
    rollups.roll_up()
    UsageRollup.objects.filter(granularity="hour").update(sketch=None)  # as rolled up by the previous version
    assert rollups.rebuild("day", DAY, DAY + timedelta(days=1)) == 1
    assert not UsageRollup.objects.filter(granularity="hour", sketch__isnull=True).exists()
    day = UsageRollup.objects.get(granularity="day", bucket=DAY)
    assert (day.requests, day.latency_p50_ms, day.latency_p99_ms) == (15, discrete(sorted(
        10 * h + m for h in range(3) for m in range(5)), 0.5), 24)
