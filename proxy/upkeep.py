"""The serving process's own housekeeping, a task on its event loop.

Every second: copy the fleet's open circuit breakers into this process's mirror, write ledger rows spooled during a
database outage, retry settlements and give-backs that failed for an outage. Every quarter lease: renew the leases of
the holds and slots this process's requests still use, release holds whose lease ran out (their process died), and
replay the journals of dead processes.

It starts with the first request the process serves, or at startup when the server sends ASGI lifespan events,
together with the listener that drops cached tables and keys when another process changes them (gateway_site/changes.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from billing import holds, ledger, recovery, scripts
from gateway_site import changes

from . import breaker, limits, metering, outages
from .db import db_step
from .ratelimits import RedisLimiter, keys_for, limiter

logger = logging.getLogger(__name__)

_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def start() -> None:
    """Start the upkeep task of the running event loop, once."""
    if not settings.TOLLGATE_UPKEEP:
        return
    loop = asyncio.get_running_loop()
    task = _tasks.get(loop)
    if task is None or task.done():
        for stale in [other for other in _tasks if other.is_closed()]:
            del _tasks[stale]
        _tasks[loop] = loop.create_task(run())
        changes.start()  # its own task: the upkeep may wait seconds on a database that is down


async def stop() -> None:
    """Stop the task and write what is still spooled (graceful shutdown)."""
    await changes.stop()
    task = _tasks.pop(asyncio.get_running_loop(), None)
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    await every_second()


async def run() -> None:
    slow_every = max(settings.TOLLGATE_RESERVATION_LEASE_SECONDS / 4, 1.0)
    last_slow = 0.0
    while True:
        try:
            await every_second()
            if time.monotonic() - last_slow >= slow_every:
                last_slow = time.monotonic()
                await renew_leases()
                await reap()
                await recovery.recover(db_step(lambda func, *args: func(*args)))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # Redis or the database being down is an outage, logged once per outage like the requests' 503s;
            # anything else is a bug and keeps its traceback.
            if (dependency := outages.dependency_of(e)) is not None:
                outages.note(dependency, e)
            else:
                logger.exception("upkeep step failed; trying again in a second")
        await asyncio.sleep(1.0)


async def every_second() -> None:
    await breaker.get().refresh()  # first: a database outage below must not leave the breaker's mirror stale
    if ledger.spooled() or ledger.is_down():
        # Its own thread: probing a dead database can block for seconds, and requests use the database thread.
        await sync_to_async(ledger.write_spooled, thread_sensitive=False)()
    await metering.settle_deferred()
    await limits.give_back_taken()


async def renew_leases() -> None:
    """Move the lease of every hold and slot this process's requests still hold one lease further."""
    meters = metering.in_flight()
    if not meters:
        return
    expires = timezone.now() + timedelta(seconds=settings.TOLLGATE_RESERVATION_LEASE_SECONDS)
    budgets, rates = holds.backend(), limiter()
    held = [m.request_id for m in meters if m.hold is not None]
    if isinstance(budgets, holds.RedisBackend):
        calls = budgets.renewal([m.hold for m in meters if m.hold is not None], expires)
        if isinstance(rates, RedisLimiter):
            slots = [(keys_for(scope, 0)[2], m.request_id) for m in meters for scope in m.scopes
                     if scope.limits.max_concurrent is not None]
            calls += rates.renewal(slots, expires.timestamp())
        if calls:
            await scripts.run(budgets.url, calls)
    elif held:
        await db_step(budgets.renew)(held, expires)


async def reap() -> None:
    """Release the holds whose lease ran out. The beat job does the same; doing it here heals within a lease."""
    await db_step(holds.reap_expired)()
