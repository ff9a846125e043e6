"""Moving the money state of earlier versions to the tenant-tagged key names (billing/keyspace.py), once.

Earlier versions kept ``tg:budget:<budget>:<start>``, ``tg:hold:<request>``, one lease set ``tg:holds`` and
``tg:rl:<scope>:<ident>:...``. ``manage.py migrate`` moves them (see gateway_site/apps.py) before the new version
serves, with every process of the old version stopped:

- each running total is renamed, with its expiry; a total the new version already started from the ledger keeps
  its spend and takes over what the old one had reserved;
- each open hold moves with its amount and lease, its counters renamed, and its tenant is registered for the reaper;
  a closed hold stays where it is as the marker that it was settled (a journal replayed after the upgrade finds it:
  see ``RedisBackend.settle``), and Redis drops it after two days;
- rate limit windows and in-flight sets are renamed (or added to the new ones);
- ``tg:layout`` is set to "2", so later runs read one key and stop.

The old keys share no slot, so this runs on the plain Redis they were on; a Redis Cluster never held them.
"""

from __future__ import annotations

import time
from typing import Any

from . import keyspace

OLD_COUNTER = "tg:budget:"
OLD_HOLD = "tg:hold:"
OLD_LEASES = "tg:holds"
OLD_RATE = "tg:rl:"

# KEYS: old total, new total. A new total already started from the ledger keeps its spend (the ledger is exact)
# and takes over the reservations of the holds that move onto it.
MOVE_COUNTER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'r', tonumber(redis.call('HGET', KEYS[1], 'r') or '0'))
  redis.call('DEL', KEYS[1])
else
  redis.call('RENAME', KEYS[1], KEYS[2])
end
return 1
"""

# KEYS: old hold, old lease set, new hold, new lease set; ARGV: request id, the counters' new names, a lease
# expiry for a hold whose lease is gone.
MOVE_HOLD = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1]) or ARGV[3]
redis.call('HSET', KEYS[3], 'state', 'open', 'amount', redis.call('HGET', KEYS[1], 'amount') or '0', 'keys', ARGV[2])
redis.call('ZADD', KEYS[4], expiry, ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: old rate limit key, new one. Counts add up, in-flight sets merge; the new key keeps its own expiry.
MOVE_RATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('RENAME', KEYS[1], KEYS[2]) return 1 end
if redis.call('TYPE', KEYS[1]).ok == 'zset' then
  redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[1], 'AGGREGATE', 'MAX')
else
  redis.call('INCRBY', KEYS[2], tonumber(redis.call('GET', KEYS[1]) or '0'))
end
redis.call('DEL', KEYS[1])
return 1
"""


def tenants_of_budgets(budget_ids: set[int]) -> dict[int, int]:
    from .models import Budget

    return dict(Budget.objects.filter(pk__in=budget_ids).values_list("pk", "tenant_id"))


def current_keys(keys: list[str]) -> list[str]:
    """The names the counters of a hold made by an earlier version have now (a deleted budget's keep theirs)."""
    old = {int(key.split(":")[2]) for key in keys if key.startswith(OLD_COUNTER)}
    tenants = tenants_of_budgets(old)
    result = []
    for key in keys:
        if key.startswith(OLD_COUNTER):
            _, _, budget, start = key.split(":")
            if int(budget) in tenants:
                key = keyspace.counter(tenants[int(budget)], int(budget), int(start))
        result.append(key)
    return result


def rate_tenants() -> tuple[dict[str, int], dict[str, int]]:
    """Who owns each key prefix and each tenant slug: the old rate limit keys named those."""
    from accounts.models import ApiKey, Tenant

    return (dict(ApiKey.objects.values_list("prefix", "tenant_id")), dict(Tenant.objects.values_list("slug", "pk")))


def migrate(client: Any, *, lease_seconds: int, now: float | None = None) -> dict[str, int]:
    """Move every money key of the old layout (see above). Returns how many of each kind moved."""
    from .hold_scripts import REGISTER
    from .holds import REGISTERED_SECONDS

    moved = {"counters": 0, "holds": 0, "rate_limits": 0}
    if (client.get(keyspace.LAYOUT) or b"").decode() == keyspace.VERSION:
        return moved
    now = time.time() if now is None else now
    counters = [key.decode() for key in client.scan_iter(match=OLD_COUNTER + "*", count=1000)]
    for old, new in zip(counters, current_keys(counters)):
        if new != old:
            moved["counters"] += int(client.eval(MOVE_COUNTER, 2, old, new))
    for hold in client.scan_iter(match=OLD_HOLD + "*", count=1000):
        fields = client.hgetall(hold)
        if fields.get(b"state") != b"open" or not fields.get(b"keys"):
            continue  # closed: stays as the marker; a hold of no budget holds nothing
        keys = current_keys(fields[b"keys"].decode().split())
        tenant_id = keyspace.tenant_of(keys[0])
        if tenant_id is None:
            continue  # its budget is gone: nothing to release it from
        request_id = hold.decode()[len(OLD_HOLD):]
        client.eval(REGISTER, 1, keyspace.TENANTS, tenant_id, int(now) + REGISTERED_SECONDS)
        moved["holds"] += int(client.eval(MOVE_HOLD, 4, hold, OLD_LEASES, keyspace.hold(tenant_id, request_id),
                                          keyspace.leases(tenant_id), request_id, " ".join(keys),
                                          int(now) + lease_seconds))
    prefixes, slugs = rate_tenants()
    for key in client.scan_iter(match=OLD_RATE + "*", count=1000):
        _, _, scope, ident, rest = key.decode().split(":", 4)
        tenant_id = (prefixes if scope == "key" else slugs).get(ident)
        if tenant_id is not None:
            new = f"{keyspace.rate(tenant_id, scope, ident)}:{rest}"
            moved["rate_limits"] += int(client.eval(MOVE_RATE, 2, key, new))
    client.delete(OLD_LEASES)  # what is left there are leases of closed holds
    client.set(keyspace.LAYOUT, keyspace.VERSION)
    return moved


def migrate_configured() -> dict[str, int]:
    """Migrate the configured money Redis, if there is one (nothing to move on a cluster: see above)."""
    from django.conf import settings

    from . import scripts

    url = settings.TOLLGATE_MONEY_REDIS_URL
    if not url:
        return {}
    client = scripts.sync_client(url)
    if scripts.is_cluster(url):
        client.set(keyspace.LAYOUT, keyspace.VERSION)
        return {}
    return migrate(client, lease_seconds=settings.TOLLGATE_RESERVATION_LEASE_SECONDS)
