"""Lua scripts on Redis from the event loop: budget holds and rate limits, one round trip per step.

A request's gate sends its rate limit check and its budget hold together, and its end sends the settlement
and the in-flight release together: two round trips per request at most, fewer under load (see Connection).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any



@dataclass(frozen=True)
class Call:
    """One script run: its source, keys and arguments."""

    script: str
    keys: list[str]
    args: list[Any]


class Connection:
    """One event loop's Redis client, with automatic pipelining.

    Calls made in the same moment, or while a round trip is under way, go together in the next one: under load many
    requests' holds and settlements share a round trip; alone, a call goes at once. Like the ledger's
    group commit (proxy/metering.py), each caller still waits for its own results.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.waiting: list[tuple[list[Call], asyncio.Future[list[Any]]]] = []
        self.draining = False

    def run(self, calls: list[Call]) -> asyncio.Future[list[Any]]:
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append((calls, done))
        if not self.draining:
            self.draining = True
            task = asyncio.ensure_future(self.drain())
            _draining.add(task)
            task.add_done_callback(_draining.discard)
        return done

    async def drain(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
                try:
                    results = await self.send([call for calls, _ in batch for call in calls])
                except Exception as e:  # the connection failed: every caller of this round trip learns it
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(e)
                    continue
                for calls, done in batch:
                    mine, results = results[:len(calls)], results[len(calls):]
                    if done.done():
                        continue  # the caller was cancelled meanwhile
                    failed = next((r for r in mine if isinstance(r, Exception)), None)
                    done.set_exception(failed) if failed else done.set_result(mine)
        finally:
            self.draining = False

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


MAX_BATCH = 200  # callers per round trip at most
_connections: dict[tuple[asyncio.AbstractEventLoop, str], Connection] = {}
_draining: set[asyncio.Future[None]] = set()  # keeps each drain task referenced until it ends


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
