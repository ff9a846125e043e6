"""Lua scripts on Redis from the event loop: budget holds and rate limits, one round trip per step.

A request's gate sends its rate limit check and its budget hold together, and its end sends the settlement
and the in-flight release together: two round trips per request at most, fewer under load (see Connection).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .batching import GroupCommit

# KEYS: sorted sets; ARGV: one member, removed from each (a request's in-flight slots).
ZREM_ALL = """
for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return #KEYS
"""


@dataclass(frozen=True)
class Call:
    """One script run: its source, keys and arguments."""

    script: str
    keys: list[str]
    args: list[Any]


class Connection(GroupCommit[list[Call]]):
    """One event loop's Redis client, with automatic pipelining.

    Calls made in the same moment, or while a round trip is under way, go together in the next one: under load many
    requests' holds and settlements share a round trip; alone, a call goes at once.
    """

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client

    def run(self, calls: list[Call]) -> asyncio.Future[Any]:
        return self.submit(calls)

    async def flush(self, callers: list[list[Call]]) -> list[Any]:
        results = await self.send([call for calls in callers for call in calls])
        answers: list[Any] = []
        for calls in callers:
            mine, results = results[:len(calls)], results[len(calls):]
            answers.append(next((r for r in mine if isinstance(r, Exception)), mine))  # a failed script fails its caller
        return answers

    async def send(self, calls: list[Call]) -> list[Any]:
        if len(calls) == 1:
            call = calls[0]
            try:
                return [await self.client.eval(call.script, len(call.keys), *call.keys, *call.args)]
            except Exception as e:
                if is_script_error(e):
                    return [e]
                raise
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.eval(call.script, len(call.keys), *call.keys, *call.args)
        return list(await pipe.execute(raise_on_error=False))


_connections: dict[tuple[asyncio.AbstractEventLoop, str], Connection] = {}


def is_script_error(error: Exception) -> bool:
    """An error of one script (a Redis reply), as opposed to a broken connection."""
    import redis.exceptions

    return isinstance(error, redis.exceptions.ResponseError)


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a node of a Redis Cluster (the money state's, when TOLLGATE_MONEY_REDIS_CLUSTER is on)."""
    from django.conf import settings

    return bool(settings.TOLLGATE_MONEY_REDIS_CLUSTER) and url == settings.TOLLGATE_MONEY_REDIS_URL


def sync_client(url: str, **options: Any) -> Any:
    """A thread-safe client for ``url``: a cluster client (which finds the other nodes) for a cluster."""
    if is_cluster(url):
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **options)
    import redis

    return redis.Redis.from_url(url, **options)


def connection(url: str) -> Connection:
    """The Redis connection of the running event loop for ``url`` (a client is bound to one loop)."""
    loop = asyncio.get_running_loop()
    if (loop, url) not in _connections:
        for stale in [key for key in _connections if key[0].is_closed()]:
            del _connections[stale]
        if is_cluster(url):
            from redis.asyncio.cluster import RedisCluster

            client: Any = RedisCluster.from_url(url)  # each script's keys share a slot: see billing/keyspace.py
        else:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(url)
        _connections[(loop, url)] = Connection(client)
    return _connections[(loop, url)]


async def run(url: str, calls: list[Call]) -> list[Any]:
    """Run the scripts in order, in one round trip (shared with other callers under load); returns their results."""
    return await connection(url).run(calls)
