"""Lua scripts on Redis from the event loop: budget holds and rate limits, one round trip per step.

A request's gate sends its rate limit check and its budget hold together, and its end sends the settlement
and the in-flight release together: two round trips per request, whatever applies.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from django.conf import settings


@dataclass(frozen=True)
class Call:
    """One script run: its source, keys and arguments."""

    script: str
    keys: list[str]
    args: list[Any]


@dataclass
class Connection:
    client: Any  # redis.asyncio.Redis
    slots: asyncio.Semaphore  # at most TOLLGATE_REDIS_CONNECTIONS calls at once; a burst waits for a turn


_connections: dict[tuple[asyncio.AbstractEventLoop, str], Connection] = {}


def connection(url: str) -> Connection:
    """The Redis client of the running event loop for ``url`` (a client is bound to one loop)."""
    import redis.asyncio

    loop = asyncio.get_running_loop()
    if (loop, url) not in _connections:
        for stale in [key for key in _connections if key[0].is_closed()]:
            del _connections[stale]
        size = settings.TOLLGATE_REDIS_CONNECTIONS
        # The semaphore keeps the pool from ever running out, which is cheaper than redis-py's blocking pool.
        pool = redis.asyncio.ConnectionPool.from_url(url, max_connections=size)
        _connections[(loop, url)] = Connection(redis.asyncio.Redis(connection_pool=pool), asyncio.Semaphore(size))
    return _connections[(loop, url)]


async def run(url: str, calls: list[Call]) -> list[Any]:
    """Run the scripts in order in one round trip; returns their results."""
    conn = connection(url)
    async with conn.slots:
        if len(calls) == 1:
            call = calls[0]
            return [await conn.client.eval(call.script, len(call.keys), *call.keys, *call.args)]
        pipe = conn.client.pipeline(transaction=False)
        for call in calls:
            pipe.eval(call.script, len(call.keys), *call.keys, *call.args)
        return list(await pipe.execute())
