"""Every Lua script of the money state touches keys of one hash slot (so it runs on a Redis Cluster)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from redis.crc import key_slot

from accounts.keys import Limits
from billing import holds, keyspace, live, scripts
from billing.budgets import BudgetSpec
from billing.holds import Hold, RedisBackend
from billing.scripts import Call
from proxy.ratelimits import RedisLimiter, Scope

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ALL_LIMITS = Limits(requests_per_minute=10, tokens_per_minute=1000, max_concurrent=2)


def specs(tenant_id: int) -> tuple[BudgetSpec, ...]:
    """A tenant's budget of each period and a key's, as the gate finds them for one request."""
    tenant = [BudgetSpec(id=tenant_id * 10 + i, name="t", tenant_id=tenant_id, key_id=None, limit_micros=10**6,
                         period=period, hard=True, zone="Europe/Paris")
              for i, period in enumerate(("day", "week", "month", "lifetime"))]
    key = BudgetSpec(id=tenant_id * 10 + 9, name="k", tenant_id=tenant_id, key_id=3, limit_micros=10**6,
                     period="month", hard=False, zone="UTC")
    return (*tenant, key)


def scopes(tenant_id: int) -> list[Scope]:
    return [Scope("key", "tg-abc123", ALL_LIMITS, tenant_id), Scope("tenant", "acme", ALL_LIMITS, tenant_id)]


def slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


def one_slot(call: Call) -> bool:
    return len(slots(call.keys)) == 1


@pytest.mark.parametrize("tenant_id", [1, 7, 123456])
def test_the_gate_and_the_settlement_of_a_request_touch_one_slot(tenant_id: int) -> None:
    backend, limiter = RedisBackend("redis://unused"), RedisLimiter("redis://unused")
    check, _ = limiter.check("req-1", scopes(tenant_id), 100)
    pending = backend.pending("req-1", specs(tenant_id), 5000, NOW)
    hold = backend.hold_of(pending, [1, [0, 0] * len(specs(tenant_id))])
    assert hold is not None
    settlement = backend.settlement(hold, 1234)
    release = limiter.release_call("req-1", scopes(tenant_id))
    assert settlement is not None and release is not None
    owned = [(key, "req-1") for key in limiter.slot_keys(scopes(tenant_id))]
    renewals = backend.renewal([hold], NOW) + limiter.renewal(owned, NOW.timestamp())
    calls = [check, pending.call, settlement, release, *renewals]
    assert all(one_slot(call) for call in calls)
    # The gate's rate limit check and budget hold go in one round trip: one slot for both, the tenant's.
    assert slots([k for call in calls for k in call.keys]) == {key_slot(keyspace.tag(tenant_id).encode())}


def test_each_tenant_has_its_own_tag_and_renewals_split_by_tenant() -> None:
    backend = RedisBackend("redis://unused")
    held = [Hold(f"r{t}", 1, [], True, [holds.counter_key(specs(t)[0], NOW)]) for t in (1, 2, 3)]
    calls = backend.renewal(held, NOW)
    assert len(calls) == 3 and all(one_slot(call) for call in calls)
    limiter = RedisLimiter("redis://unused")
    owned = [(key, f"r{t}") for t in (1, 2, 3) for key in limiter.slot_keys(scopes(t))]
    assert len(limiter.renewal(owned, NOW.timestamp())) == 3
    assert all(one_slot(call) for call in limiter.renewal(owned, NOW.timestamp()))


def test_the_reaper_the_registry_and_the_live_page_registry_use_one_key_each() -> None:
    # REAP runs on one tenant's lease set; REGISTER and FORGET on the registry; the live page registry is one hash.
    for keys in ([keyspace.leases(5)], [keyspace.TENANTS], [live.LISTENERS]):
        assert len(slots(keys)) == 1
    assert "KEYS[2]" not in holds.REAP and "KEYS[2]" not in holds.REGISTER and "KEYS[2]" not in holds.FORGET
    # The hold keys REAP builds from its prefix argument carry the tenant's tag, like its lease set.
    assert key_slot(keyspace.hold(5, "x").encode()) == key_slot(keyspace.leases(5).encode())


def test_scripts_name_no_key_they_were_not_given() -> None:
    """A script may only touch KEYS (or, like REAP and SETTLE, keys of the same tag built from its arguments)."""
    import re

    from billing import layout
    from proxy import ratelimits

    sources = [holds.RESERVE, holds.CREATE, holds.SETTLE, holds.REAP, holds.RENEW, holds.FORGET, holds.REGISTER,
               ratelimits.CHECK, ratelimits.RENEW, scripts.ZREM_ALL]
    for source in sources:
        assert not re.search(r"redis\.call\('\w+', '", source), source  # no literal key name
    assert layout.MOVE_COUNTER  # the upgrade's scripts run only on the plain Redis that held the old names


def test_keys_name_their_tenant() -> None:
    assert keyspace.tenant_of(keyspace.counter(42, 1, 0)) == 42
    assert keyspace.tenant_of("tg:budget:1:0") is None
    hold = Hold("r", 1, [], True, ["tg:budget:1:0"])
    with pytest.raises(ValueError):
        RedisBackend("redis://unused").settlement(hold, 0)


@pytest.mark.parametrize("deployment_id", [1, 42, 99999])
def test_the_circuit_breakers_scripts_touch_one_slot_each(deployment_id: int) -> None:
    from proxy import breaker_scripts

    assert len(slots(breaker_scripts.keys(deployment_id))) == 1  # FAIL, SUCCEED, CLAIM (state and probe)
    assert len(slots([breaker_scripts.INDEX])) == 1  # the INDEX_* scripts
