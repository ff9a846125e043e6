"""The names of the money state in Redis: every key of a tenant carries the hash tag ``{t<tenant id>}``.

Redis Cluster runs a script only when all its keys hash to one slot, and hashes only the part between the first
braces when there is one. A request's gate touches its key's and its tenant's rate limits, the budgets of both,
its hold and the tenant's lease set, all of one tenant: tagged alike, every script stays in one slot, and a
pipeline of several tenants' scripts is split by node by the cluster client.

    tg:{t<tenant>}:budget:<budget id>:<period start>   running total (hash: s, p, r)
    tg:{t<tenant>}:hold:<request id>                    a hold, then its closed marker
    tg:{t<tenant>}:holds                                the tenant's leases (sorted set: request id -> expiry)
    tg:{t<tenant>}:rl:<scope>:<ident>:<r|t>:<minute>    requests and tokens of a minute
    tg:{t<tenant>}:rl:<scope>:<ident>:c                 requests in flight (sorted set: request id -> lease)
    tg:hold-tenants                                     tenants that made holds (hash: tenant id -> until)

Keys of earlier versions (``tg:budget:...``, ``tg:hold:...``, ``tg:holds``, ``tg:rl:...``) are moved to these
names once, by billing/layout.py.
"""

from __future__ import annotations

import re

TENANTS = "tg:hold-tenants"  # where the reaper finds the tenants whose leases it looks at (see billing/holds.py)
LAYOUT = "tg:layout"  # the version of this layout the Redis holds ("2"), set once its old keys were moved
VERSION = "2"

_TAGGED = re.compile(r"^tg:\{t(\d+)\}:")


def tag(tenant_id: int) -> str:
    return f"tg:{{t{tenant_id}}}:"


def counter(tenant_id: int, budget_id: int, starts_at: int) -> str:
    return f"{tag(tenant_id)}budget:{budget_id}:{starts_at}"


def hold(tenant_id: int, request_id: str) -> str:
    return f"{tag(tenant_id)}hold:{request_id}"


def leases(tenant_id: int) -> str:
    return f"{tag(tenant_id)}holds"


def rate(tenant_id: int, scope: str, ident: str) -> str:
    """The common start of a rate limit scope's keys."""
    return f"{tag(tenant_id)}rl:{scope}:{ident}"


def tenant_of(key: str) -> int | None:
    """The tenant whose tag the key carries, or None for a key of the old layout."""
    match = _TAGGED.match(key)
    return int(match.group(1)) if match else None
