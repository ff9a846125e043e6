"""Group commit: work that arrives while a flush is under way goes together in the next flush.

Used for the ledger's INSERTs (proxy/metering.py) and for the gate's Redis scripts (billing/scripts.py). Alone, an
item is flushed at once; under load one round trip serves many requests, and each submitter still awaits its own
result.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")

_running: set[asyncio.Future[Any]] = set()  # keeps each drain task referenced until it ends


class GroupCommit(Generic[Item]):
    limit = 200  # items per flush at most

    def __init__(self) -> None:
        self.waiting: list[tuple[Item, asyncio.Future[Any]]] = []
        self.draining = False

    def submit(self, item: Item) -> asyncio.Future[Any]:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, done))
        if not self.draining:
            self.draining = True
            task = asyncio.ensure_future(self.drain())
            _running.add(task)
            task.add_done_callback(_running.discard)
        return done

    async def flush(self, items: list[Item]) -> list[Any]:
        """Handle the items in one go; return one result per item (an Exception fails only its item).
        Raising fails every item of the flush."""
        raise NotImplementedError

    async def drain(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[:self.limit], self.waiting[self.limit:]
                try:
                    results = await self.flush([item for item, _ in batch])
                except Exception as e:
                    results = [e] * len(batch)
                for (_, done), result in zip(batch, results):
                    if done.done():
                        continue  # the submitter was cancelled meanwhile
                    if isinstance(result, Exception):
                        done.set_exception(result)
                    else:
                        done.set_result(result)
        finally:
            self.draining = False
