"""The money state on a real Redis Cluster (three primaries this test starts): the gate, settlement, reaping.

Without redis-server here the test skips; tests/billing/test_key_layout.py still proves every script's keys share
one slot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db.models import Sum
from django.test import Client

from billing import budgets, holds, keyspace, scripts
from billing.models import Budget, Price, UsageRecord
from proxy import ratelimits, routing
from proxy.services import ensure_demo_route

from ..conftest import Party, make_party, room_in_this_minute


@pytest.fixture
def on_cluster(cluster_url: str, settings: Any) -> Iterator[str]:
    settings.TOLLGATE_MONEY_REDIS_URL = cluster_url
    settings.TOLLGATE_MONEY_REDIS_CLUSTER = True
    holds.reset_backend()
    ratelimits.reset_limiter()
    yield cluster_url
    holds.reset_backend()
    ratelimits.reset_limiter()
    scripts._connections.clear()


def chat(client: Client, party: Party, content: str = "Hello there") -> Any:
    payload = {"model": "demo", "messages": [{"role": "user", "content": content}], "max_tokens": 20}
    return client.post("/v1/chat/completions", json.dumps(payload), content_type="application/json", headers=party.auth)


def spent_in_ledger(party: Party) -> int:
    return int(UsageRecord.objects.filter(tenant=party.tenant).aggregate(t=Sum("cost_picos"))["t"] or 0)


@pytest.mark.django_db
def test_the_gate_budgets_rate_limits_and_reaping_run_on_a_cluster(on_cluster: str, client: Client) -> None:
    ensure_demo_route()
    routing.invalidate()
    Price.objects.create(model="demo", input_per_million=Decimal("1000"), output_per_million=Decimal("2000"))
    # Several tenants, so that their keys land on different nodes and one pipeline spans them.
    parties = [make_party(f"cluster{i}") for i in range(4)]
    client_ = scripts.sync_client(on_cluster)
    nodes = {client_.get_node_from_key(keyspace.tag(p.tenant.pk)).name for p in parties}
    assert len(nodes) >= 2
    budget_of = {}
    for party in parties:
        party.key.requests_per_minute, party.key.max_concurrent = 3, 1
        party.key.save()
        budget_of[party.tenant.pk] = Budget.objects.create(tenant=party.tenant, amount=Decimal("1"), period="month")
        Budget.objects.create(tenant=party.tenant, key=party.key, amount=Decimal("0.5"), period="lifetime")
    room_in_this_minute()
    for party in parties:
        assert [chat(client, party).status_code for _ in range(4)] == [200, 200, 200, 429]  # 3 a minute
    for party in parties:
        for budget in Budget.objects.filter(tenant=party.tenant):
            state = budgets.status(budget)
            assert state.spent_picos == spent_in_ledger(party) > 0 and state.reserved_micros == 0
        slots = f"{keyspace.rate(party.tenant.pk, 'key', party.key.prefix)}:c"
        assert client_.zcard(slots) == 0  # every in-flight slot was given back

    # A hard budget refuses on the cluster too.
    poor = make_party("cluster-poor")
    Budget.objects.create(tenant=poor.tenant, amount=Decimal("0.000001"), period="day")
    refused = chat(client, poor)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"

    # A hold whose process died is released by the reaper, found through the tenant registry.
    backend = holds.backend()
    assert isinstance(backend, holds.RedisBackend)
    spec = budgets.spec_of(Budget.objects.select_related("tenant").get(pk=budget_of[parties[1].tenant.pk].pk))
    then = datetime.now(UTC) - timedelta(minutes=5)
    async_to_sync(backend.reserve)("died", (spec,), 5_000, then)
    start = budgets.period_bounds(spec.period, spec.zone, then)[0]
    assert backend.totals(spec, start)[1] == 5_000
    assert backend.open_holds() == 1
    assert backend.reap(datetime.now(UTC)) == 1
    assert backend.exact_totals(spec, start) == (spent_in_ledger(parties[1]), 0)
    assert backend.open_holds() == 0
    client_.close()


def test_the_limits_cache_works_on_a_cluster(on_cluster: str) -> None:
    from django_redis.cache import RedisCache

    cache = RedisCache(on_cluster, {"KEY_PREFIX": "tollgate-limits", "OPTIONS": {
        "CONNECTION_FACTORY": "gateway_site.redis_cluster.ClusterConnectionFactory"}})
    names = [f"rl:{i}" for i in range(20)]  # spread over the slots of every node
    for name in names:
        cache.delete(name)
        assert cache.add(name, 0, 60)
        assert not cache.add(name, 5, 60)
        assert cache.incr(name) == 1
    assert [cache.get(name) for name in names] == [1] * 20



def test_the_eviction_check_reads_every_primary(on_cluster: str) -> None:
    from gateway_site import checks

    assert checks.eviction_policies(on_cluster) == {"noeviction"}
    assert checks.money_eviction() == []
    client = scripts.sync_client(on_cluster)
    try:
        node = client.get_primaries()[1]
        client.config_set("maxmemory-policy", "allkeys-lru", target_nodes=node)  # one primary of three
        [warning] = checks.money_eviction()
        assert warning.id == "tollgate.W004" and "allkeys-lru" in warning.msg
    finally:
        client.config_set("maxmemory-policy", "noeviction", target_nodes=client.get_primaries())
        client.close()
