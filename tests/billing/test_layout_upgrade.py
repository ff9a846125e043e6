"""Upgrading a running Redis from the untagged key names: no money is lost, gained, or left held."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.db.models import Sum

from billing import budgets, holds, keyspace, layout
from billing.models import Budget, UsageRecord

from ..conftest import Party

pytestmark = [pytest.mark.needs_redis, pytest.mark.django_db(transaction=True)]

PICOS = 10**6


def row(party: Party, picos: int, request_id: str | None = None) -> UsageRecord:
    return UsageRecord.objects.create(tenant=party.tenant, key=party.key, endpoint="chat", public_model="gpt-4o",
                                      end_reason="complete", status_code=200, cost_picos=picos,
                                      request_id=uuid.UUID(request_id) if request_id else uuid.uuid4())


def ledger(party: Party) -> int:
    return int(UsageRecord.objects.filter(tenant=party.tenant).aggregate(t=Sum("cost_picos"))["t"] or 0)


def test_old_counters_holds_and_rate_limits_move_and_settle_exactly(alice: Party, settings: object) -> None:
    import redis

    url = os.environ["REDIS_URL"]
    client = redis.Redis.from_url(url)
    client.flushdb()
    backend = holds.RedisBackend(url)
    tenant_budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10"), period="month")
    key_budget = Budget.objects.create(tenant=alice.tenant, key=alice.key, amount=Decimal("5"), period="lifetime")
    specs = [budgets.spec_of(Budget.objects.select_related("tenant").get(pk=b.pk)) for b in (tenant_budget, key_budget)]
    now = datetime.now(UTC)
    starts = [budgets.period_bounds(s.period, s.zone, now)[0] for s in specs]
    old = [f"tg:budget:{s.id}:{int(start.timestamp())}" for s, start in zip(specs, starts)]
    # What the earlier version left: 2.5 micro-dollars spent (in the ledger too), two open holds (one whose
    # process died: its lease ran out), one settled, a rate limit window and an in-flight slot.
    row(alice, 2_500_000)
    open_id, dead_id, done_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    for key in old:
        client.hset(key, mapping={"s": 2, "p": 500_000, "r": 800})
    client.expire(old[0], 3600)
    client.hset(f"tg:hold:{open_id}", mapping={"state": "open", "amount": 500, "keys": " ".join(old)})
    client.hset(f"tg:hold:{dead_id}", mapping={"state": "open", "amount": 300, "keys": " ".join(old)})
    client.hset(f"tg:hold:{done_id}", mapping={"state": "settled"})
    client.zadd("tg:holds", {open_id: time.time() + 60, dead_id: time.time() - 5})
    window = int(time.time() // 60)
    client.set(f"tg:rl:key:{alice.key.prefix}:r:{window}", 3)
    client.zadd(f"tg:rl:tenant:{alice.tenant.slug}:c", {open_id: time.time() + 60})

    moved = layout.migrate(client, lease_seconds=60)
    assert moved == {"counters": 2, "holds": 2, "rate_limits": 2}
    assert not client.exists(*old, "tg:holds", f"tg:hold:{open_id}", f"tg:hold:{dead_id}")
    assert client.exists(f"tg:hold:{done_id}")  # the marker stays where a replayed journal looks for it
    assert 0 < client.ttl(holds.counter_key(specs[0], starts[0])) <= 3600  # the expiry moved with the total
    assert int(client.get(f"{keyspace.rate(alice.tenant.pk, 'key', alice.key.prefix)}:r:{window}")) == 3
    assert client.zscore(f"{keyspace.rate(alice.tenant.pk, 'tenant', alice.tenant.slug)}:c", open_id)
    for spec, start in zip(specs, starts):
        assert backend.exact_totals(spec, start) == (ledger(alice), 800)
    assert layout.migrate(client, lease_seconds=60) == {"counters": 0, "holds": 0, "rate_limits": 0}  # once

    # The open hold's request ends on a process of the new version... or its old journal is replayed: both
    # settle once. The dead one is reaped; the settled one, replayed, adds nothing.
    row(alice, 7_250_000, open_id)
    async_to_sync(backend.settle)(holds.Hold(open_id, 500, [], True, old), 7_250_000)  # a journal of the old version
    async_to_sync(backend.settle)(holds.Hold(open_id, 500, [], True, layout.current_keys(old)), 7_250_000)
    async_to_sync(backend.settle)(holds.Hold(done_id, 100, [], True, old), 9_000_000)
    assert backend.reap(datetime.now(UTC)) == 1
    for spec, start in zip(specs, starts):
        assert backend.exact_totals(spec, start) == (ledger(alice), 0)
    # The reaper found the tenant through the registry the upgrade wrote.
    assert client.hexists(keyspace.TENANTS, alice.tenant.pk)


def test_a_total_the_new_version_started_from_the_ledger_keeps_its_spend(alice: Party) -> None:
    import redis

    url = os.environ["REDIS_URL"]
    client = redis.Redis.from_url(url)
    client.flushdb()
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10"), period="lifetime")
    spec = budgets.spec_of(Budget.objects.select_related("tenant").get(pk=budget.pk))
    row(alice, 4 * PICOS)
    old = f"tg:budget:{spec.id}:{int(budgets.LIFETIME_START.timestamp())}"
    client.hset(old, mapping={"s": 4, "p": 0, "r": 200})
    request_id = str(uuid.uuid4())
    client.hset(f"tg:hold:{request_id}", mapping={"state": "open", "amount": 200, "keys": old})
    client.zadd("tg:holds", {request_id: time.time() + 60})
    client.hset(holds.counter_key(spec, budgets.LIFETIME_START), mapping={"s": 4, "p": 0, "r": 0})
    layout.migrate(client, lease_seconds=60)
    backend = holds.RedisBackend(url)
    assert backend.exact_totals(spec, budgets.LIFETIME_START) == (4 * PICOS, 200)
    row(alice, 1 * PICOS, request_id)
    async_to_sync(backend.settle)(holds.Hold(request_id, 200, [], True, [old]), 1 * PICOS)
    assert backend.exact_totals(spec, budgets.LIFETIME_START) == (ledger(alice), 0)


def test_the_reaper_forgets_a_tenant_only_when_it_is_idle_and_unregistered(alice: Party) -> None:
    import redis

    url = os.environ["REDIS_URL"]
    client = redis.Redis.from_url(url)
    client.flushdb()
    backend = holds.RedisBackend(url)
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10"), period="lifetime")
    spec = budgets.spec_of(Budget.objects.select_related("tenant").get(pk=budget.pk))
    now = datetime.now(UTC)
    hold = async_to_sync(backend.reserve)("r1", (spec,), 100, now)
    assert client.hexists(keyspace.TENANTS, alice.tenant.pk)
    async_to_sync(backend.settle)(hold, 0)
    assert backend.reap(now) == 0
    assert client.hexists(keyspace.TENANTS, alice.tenant.pk)  # registered for a day: a hold may be on its way
    later = now + timedelta(seconds=holds.REGISTERED_SECONDS + 1)
    assert backend.reap(later) == 0
    assert not client.hexists(keyspace.TENANTS, alice.tenant.pk)  # no lease, no registration: forgotten
    # A process that registered it an hour or more ago registers it again before its next hold.
    backend._registered[alice.tenant.pk] -= holds.REREGISTER_SECONDS
    async_to_sync(backend.reserve)("r2", (spec,), 100, later - timedelta(seconds=holds.REGISTERED_SECONDS))
    assert client.hexists(keyspace.TENANTS, alice.tenant.pk)
    assert backend.reap(later + timedelta(days=1)) == 1  # found, and its lease had run out
    assert backend.exact_totals(spec, budgets.LIFETIME_START) == (0, 0)


def test_migrate_moves_the_keys_once_it_has_run_billings_migrations(alice: Party) -> None:
    import redis
    from django.apps import apps
    from django.db.models.signals import post_migrate

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.flushdb()
    old = f"tg:rl:tenant:{alice.tenant.slug}:r:1"
    client.set(old, 2)
    billing = apps.get_app_config("billing")
    post_migrate.send(sender=billing, app_config=billing, verbosity=0, interactive=False, using="default", apps=apps)
    assert client.exists(old) and not client.exists(keyspace.LAYOUT)  # a flush sends this too, without a plan
    post_migrate.send(sender=billing, app_config=billing, verbosity=0, interactive=False, using="default", apps=apps,
                      plan=[])
    assert client.get(keyspace.LAYOUT) == b"2" and not client.exists(old)
    assert client.get(f"{keyspace.rate(alice.tenant.pk, 'tenant', alice.tenant.slug)}:r:1") == b"2"
