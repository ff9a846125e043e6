"""Usage rollups: per tenant, key, model, provider, hour and day; idempotent, incremental, late rows, pruning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum

from billing import budgets, rollups
from billing.models import Budget, RollupState, UsageRecord, UsageRollup
from billing.rollups import discrete

from ..conftest import Party

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def row(party: Party, at: datetime, *, model: str = "gpt-4o", latency: int = 100, cost: int = 1_000,
        end_reason: str = "complete", prompt: int = 10, completion: int = 5, key: bool = True,
        provider: str = "openai", ttfb: int | None = None) -> UsageRecord:
    return UsageRecord.objects.create(
        tenant=party.tenant, key=party.key if key else None, endpoint="chat", public_model=model, end_reason=end_reason,
        status_code=200 if end_reason == "complete" else 502, prompt_tokens=prompt, completion_tokens=completion,
        latency_ms=latency, cost_picos=cost, created_at=at, provider=provider, ttfb_ms=ttfb)


def snapshot(granularity: str = "hour") -> list[tuple[object, ...]]:
    return list(UsageRollup.objects.filter(granularity=granularity)
                .order_by("bucket", "tenant_id", "key_id", "model", "provider")
                .values_list("bucket", "tenant_id", "key_id", "model", "provider", "requests", "errors", "rejected",
                             "prompt_tokens", "completion_tokens", "cost_picos", "latency_p50_ms", "latency_p95_ms",
                             "latency_p99_ms", "ttfb_p50_ms", "ttfb_p95_ms"))


def test_rollups_count_tokens_cost_errors_and_latency_percentiles_per_hour_and_day(alice: Party, bob: Party) -> None:
    latencies = [40, 10, 30, 20, 1000, 50, 60, 70, 80, 90]
    for i, latency in enumerate(latencies):
        row(alice, T0 + timedelta(minutes=i), latency=latency, cost=1_001 + i)
    row(alice, T0 + timedelta(minutes=30), end_reason="upstream_error", latency=5, cost=0)
    row(alice, T0 + timedelta(minutes=31), end_reason="rejected", latency=1, cost=0, prompt=0, completion=0)
    row(alice, T0 + timedelta(hours=1, minutes=5), model="claude", cost=7)
    row(bob, T0 + timedelta(minutes=2), cost=500)

    run = rollups.roll_up()
    assert (run.rows_read, run.hours, run.days) == (14, 2, 1)
    first = UsageRollup.objects.get(granularity="hour", bucket=T0, tenant=alice.tenant, model="gpt-4o")
    answered = sorted([*latencies, 5])  # the upstream error was answered; the rejection was not
    assert (first.requests, first.errors, first.rejected) == (12, 1, 1)
    assert (first.prompt_tokens, first.completion_tokens) == (11 * 10, 11 * 5)
    assert first.cost_picos == sum(1_001 + i for i in range(10))
    assert (first.latency_p50_ms, first.latency_p95_ms) == (discrete(answered, 0.5), discrete(answered, 0.95)) == (50, 1000)
    assert UsageRollup.objects.get(granularity="hour", bucket=T0 + timedelta(hours=1)).model == "claude"
    day = UsageRollup.objects.filter(granularity="day", bucket=T0.replace(hour=0), tenant=alice.tenant)
    assert day.aggregate(cost=Sum("cost_picos"))["cost"] == first.cost_picos + 7
    assert UsageRollup.objects.get(granularity="day", tenant=bob.tenant).cost_picos == 500  # bob's are bob's


def test_rollups_group_by_provider_with_p99_latency_and_time_to_first_byte(alice: Party, bob: Party) -> None:
    # 100 answered requests on one provider: latencies 1..100 ms; time to first byte 201..300 ms for 90 of them.
    for i in range(100):
        row(alice, T0 + timedelta(seconds=i), latency=i + 1, ttfb=201 + i if i % 10 else None, cost=1_000 + i,
            provider="openai")
    row(alice, T0 + timedelta(minutes=5), end_reason="rejected", latency=9_999, cost=0, provider="openai")
    # The same tenant, key and model served by another provider: a row of its own.
    for latency, ttfb in [(500, 50), (700, None), (600, 60)]:
        row(alice, T0 + timedelta(minutes=10), latency=latency, ttfb=ttfb, cost=3, provider="azure")
    row(alice, T0 + timedelta(minutes=20), end_reason="rejected", latency=1, cost=0, provider="")  # reached no provider
    row(bob, T0 + timedelta(minutes=1), latency=5, ttfb=4, cost=500, provider="openai")

    rollups.roll_up()
    hour = UsageRollup.objects.filter(granularity="hour", bucket=T0, tenant=alice.tenant, model="gpt-4o")
    assert sorted(hour.values_list("provider", flat=True)) == ["", "azure", "openai"]
    openai = hour.get(provider="openai")
    latencies = list(range(1, 101))  # the rejected row counts as a request, not in the percentiles
    ttfbs = sorted(201 + i for i in range(100) if i % 10)
    assert (openai.requests, openai.rejected, openai.cost_picos) == (101, 1, sum(1_000 + i for i in range(100)))
    assert (openai.latency_p50_ms, openai.latency_p95_ms, openai.latency_p99_ms) == (50, 95, 99)
    assert (openai.ttfb_p50_ms, openai.ttfb_p95_ms) == (discrete(ttfbs, 0.5), discrete(ttfbs, 0.95)) == (250, 296)
    azure = hour.get(provider="azure")
    assert (azure.requests, azure.cost_picos) == (3, 9)
    assert (azure.latency_p50_ms, azure.latency_p95_ms, azure.latency_p99_ms) == (600, 700, 700)
    assert (azure.ttfb_p50_ms, azure.ttfb_p95_ms) == (50, 60)  # only the requests that had a first byte
    nowhere = hour.get(provider="")
    assert (nowhere.requests, nowhere.rejected, nowhere.latency_p50_ms, nowhere.latency_p99_ms) == (1, 1, None, None)
    assert (nowhere.ttfb_p50_ms, nowhere.ttfb_p95_ms) == (None, None)
    # The day holds the same groups, and the exact sums equal the ledger's, per tenant.
    day = UsageRollup.objects.filter(granularity="day", bucket=T0.replace(hour=0), tenant=alice.tenant)
    assert sorted(day.values_list("provider", "requests")) == [("", 1), ("azure", 3), ("openai", 101)]
    for tenant in (alice.tenant, bob.tenant):
        ledger = UsageRecord.objects.filter(tenant=tenant).aggregate(
            cost=Sum("cost_picos"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
        for granularity in ("hour", "day"):
            rolled = UsageRollup.objects.filter(tenant=tenant, granularity=granularity).aggregate(
                cost=Sum("cost_picos"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
            assert rolled == ledger
    assert UsageRollup.objects.get(granularity="hour", tenant=bob.tenant).ttfb_p95_ms == 4


def test_running_again_changes_nothing_and_a_window_rebuilt_twice_is_the_same(alice: Party) -> None:
    for i in range(5):
        row(alice, T0 + timedelta(minutes=10 * i), latency=10 * i, ttfb=i if i % 2 else None)
    row(alice, T0 + timedelta(minutes=7), latency=33, ttfb=3, provider="azure")
    rollups.roll_up()
    hours, days = snapshot("hour"), snapshot("day")
    assert [(r[4], r[5], r[-2]) for r in hours] == [("azure", 1, 3), ("openai", 5, 1)]  # provider, requests, ttfb p50
    assert rollups.roll_up().rows_read == 0
    RollupState.objects.update(last_record_id=0)  # as if the whole ledger were new again
    rollups.roll_up()
    rollups.rebuild("hour", T0, T0 + timedelta(hours=1))
    assert (snapshot("hour"), snapshot("day")) == (hours, days)


def test_a_late_row_rebuilds_its_old_hour_and_day(alice: Party) -> None:
    row(alice, T0, cost=100)
    row(alice, T0 + timedelta(days=1), cost=200)
    rollups.roll_up()
    row(alice, T0 + timedelta(minutes=59), cost=50, key=False)  # written now, for yesterday's hour
    run = rollups.roll_up()
    assert run.rows_read == 1  # (windows near the watermark are rebuilt too, to the same rows)
    hour = UsageRollup.objects.filter(granularity="hour", bucket=T0)
    assert set(hour.values_list("key_id", "cost_picos")) == {(alice.key.pk, 100), (None, 50)}
    day_total = UsageRollup.objects.filter(granularity="day", bucket=T0.replace(hour=0)).aggregate(c=Sum("cost_picos"))
    assert day_total["c"] == 150
    assert UsageRollup.objects.get(granularity="day", bucket=(T0 + timedelta(days=1)).replace(hour=0)).cost_picos == 200


def test_a_backlog_is_read_a_chunk_at_a_time(alice: Party) -> None:
    for i in range(7):
        row(alice, T0 + timedelta(hours=i))
    reads = [rollups.roll_up(chunk=3).rows_read for _ in range(4)]
    assert reads == [3, 3, 1, 0]
    assert UsageRollup.objects.filter(granularity="hour").count() == 7


def test_percentiles_match_between_the_database_and_python() -> None:
    assert [discrete(list(range(1, 101)), f) for f in (0.5, 0.95)] == [50, 95]
    assert [discrete([7], f) for f in (0.5, 0.95, 0.99)] == [7, 7, 7]
    assert discrete(list(range(1, 201)), 0.99) == 198
    assert discrete([1, 2, 3], 0.5) == 2


def test_pruning_deletes_only_old_rolled_up_rows_and_lifetime_budgets_keep_their_spend(alice: Party) -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    old = [row(alice, now - timedelta(days=100 + i), cost=1_000) for i in range(3)]
    recent = row(alice, now - timedelta(days=5), cost=10)
    lifetime = Budget.objects.create(tenant=alice.tenant, key=alice.key, amount=Decimal("1"), period="lifetime")
    spec = budgets.spec_of(lifetime)
    before = budgets.ledger_spent(spec, budgets.LIFETIME_START)

    assert rollups.prune(retention_days=90, now=now).deleted == 0  # nothing is rolled up yet: nothing goes
    rollups.roll_up()
    # Rows within ID_OVERLAP of the watermark may still be re-read; as if more rows had been rolled up since:
    RollupState.objects.update(last_record_id=recent.pk + rollups.ID_OVERLAP)
    run = rollups.prune(retention_days=90, now=now, batch=2)
    assert run.deleted == 3 and not UsageRecord.objects.filter(pk__in=[r.pk for r in old]).exists()
    assert UsageRecord.objects.filter(pk=recent.pk).exists()
    assert rollups.pruned_before() == datetime(2026, 8, 25, tzinfo=UTC)
    assert budgets.ledger_spent(spec, budgets.LIFETIME_START) == before == 3_010
    assert rollups.prune(retention_days=0, now=now).deleted == 0  # 0 keeps the ledger forever
