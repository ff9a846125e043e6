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


def connection(url: str) -> Connection:
    """The Redis connection of the running event loop for ``url`` (a client is bound to one loop)."""
    import redis.asyncio

    loop = asyncio.get_running_loop()
    if (loop, url) not in _connections:
        for stale in [key for key in _connections if key[0].is_closed()]:
            del _connections[stale]
        _connections[(loop, url)] = Connection(redis.asyncio.Redis.from_url(url))
    return _connections[(loop, url)]


async def run(url: str, calls: list[Call]) -> list[Any]:
    """Run the scripts in order, in one round trip (shared with other callers under load); returns their results."""
    return await connection(url).run(calls)
