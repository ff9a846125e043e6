"""The live usage feed: each written ledger row goes to its tenant's channel group, for the live page.

Rows are only published for tenants that have a live page open somewhere: each open page registers its tenant
(in the channel layer's Redis when configured, shared by all processes; in this process otherwise) and refreshes that while it is open,
and each writing process reads the registry at most every REFRESH seconds, not per row.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from .models import PICOS_PER_MICRO, picos_to_dollars

logger = logging.getLogger(__name__)

LISTENERS = "tg:live:listeners"  # Redis hash: tenant id -> until when (unix time) a page listens
LEASE = 90  # seconds a registration lasts; an open page renews it every LEASE / 3
REFRESH = 2.0  # how stale a process's copy of the registry may be

_local: dict[int, float] = {}  # the registry without Redis
_copy: tuple[float, set[int]] = (0.0, set())  # (read at, tenants) of the shared registry

READ = "return redis.call('HGETALL', KEYS[1])"


async def listen(tenant_id: int) -> None:
    """Register (or renew) an open live page of the tenant. Other processes see it within REFRESH seconds."""
    until = time.time() + LEASE
    _local[tenant_id] = until
    _copy[1].add(tenant_id)  # this process publishes to it at once
    if settings.TOLLGATE_CHANNELS_REDIS_URL:
        from . import scripts

        await scripts.run(settings.TOLLGATE_CHANNELS_REDIS_URL, [scripts.Call("return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])",
                                                            [LISTENERS], [tenant_id, int(until)])])


async def listening() -> set[int]:
    """The tenants with a live page open, as this process last read them."""
    global _copy
    now = time.time()
    if not settings.TOLLGATE_CHANNELS_REDIS_URL:
        return {tenant for tenant, until in _local.items() if until > now}
    read_at, tenants = _copy
    if now - read_at > REFRESH:
        from . import scripts

        _copy = (now, tenants)  # one reader at a time; the others use the copy meanwhile
        [pairs] = await scripts.run(settings.TOLLGATE_CHANNELS_REDIS_URL, [scripts.Call(READ, [LISTENERS], [])])
        tenants = {int(pairs[i]) for i in range(0, len(pairs), 2) if int(pairs[i + 1]) > now}
        _copy = (now, tenants)
    return tenants


def forget_listeners() -> None:
    """Drop this process's registry and copy (tests)."""
    global _copy
    _local.clear()
    _copy = (0.0, set())


def group(tenant_id: int) -> str:
    return f"usage.tenant.{tenant_id}"


def enabled() -> bool:
    return bool(getattr(settings, "CHANNEL_LAYERS", None)) and settings.TOLLGATE_LIVE_FEED


def event(record: Any) -> dict[str, Any]:
    """What a live page shows of one row: never the prompt, the answer, or anything of another tenant."""
    return {
        "request_id": str(record.request_id), "at": record.created_at.isoformat(), "model": record.public_model,
        "key_id": record.key_id, "end_reason": record.end_reason, "status": record.status_code,
        "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
        # Exact dollars as a string: a JSON number would be a float. cost_micros (rounded half up) is kept for
        # pages loaded before cost_usd existed.
        "cost_usd": f"{picos_to_dollars(record.cost_picos).normalize():f}",
        "cost_micros": (record.cost_picos + PICOS_PER_MICRO // 2) // PICOS_PER_MICRO, "latency_ms": record.latency_ms,
    }


async def publish(records: list[Any]) -> None:
    """One message per tenant per batch of rows."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        watched = await listening()
    except Exception as e:
        warn_quietly(f"live usage feed: the listener registry could not be read ({type(e).__name__}: {e})")
        return
    by_tenant: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record.tenant_id in watched:
            by_tenant[record.tenant_id].append(event(record))
    for tenant_id, rows in by_tenant.items():
        try:
            await layer.group_send(group(tenant_id), {"type": "usage.rows", "rows": rows})
        except Exception as e:
            warn_quietly(f"live usage feed: could not publish rows ({type(e).__name__}: {e})")


QUIET_SECONDS = 30.0
_last_warning = -QUIET_SECONDS


def warn_quietly(message: str) -> None:
    """One line per QUIET_SECONDS: while Redis is down every batch of rows would otherwise log a traceback."""
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= QUIET_SECONDS:
        _last_warning = now
        logger.warning("%s", message[:300])
