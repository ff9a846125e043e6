"""Per-queue pace: at most TOLLGATE_BATCH_RATES[queue] lines start per minute, across every worker.

Fixed one-minute windows, as the /v1 rate limits count. With Redis (the money Redis) every worker counts on one
key per queue and minute; without it the count is this process's (exact for the single-worker embedded setup).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from django.conf import settings

from billing import scripts
from billing.scripts import Call

WINDOW = 60
# KEYS: the window's counter. ARGV: its time to live. Returns the count with this line.
COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""

_local: dict[str, tuple[int, int]] = {}  # queue -> (window, lines started in it)


def window_key(queue: str, window: int) -> str:
    return f"tg:batch-pace:{{{queue}}}:{window}"


async def count(queue: str, window: int) -> int:
    """Count one more line started in the queue's window; returns the window's count."""
    url = settings.TOLLGATE_MONEY_REDIS_URL
    if url:
        result = await scripts.run(url, [Call(COUNT, [window_key(queue, window)], [WINDOW * 2])])
        return int(result[0])
    current, started = _local.get(queue, (window, 0))
    started = started + 1 if current == window else 1
    _local[queue] = (window, started)
    return started


async def wait_turn(queue: str, stopped: Callable[[], object] = lambda: None) -> None:
    """Return when the queue may start one more line (at once when it has no rate), or as soon as ``stopped()``."""
    limit = settings.TOLLGATE_BATCH_RATES.get(queue)
    if limit is None:
        return
    while not stopped():
        now = time.time()
        window = int(now // WINDOW)
        if await count(queue, window) <= limit:
            return
        # The window is full: wait for the next one, a second at a time so a cancel is seen. A refused count stays
        # counted, harmlessly: that window is full anyway.
        while time.time() < (window + 1) * WINDOW and not stopped():
            await asyncio.sleep(min(1.0, (window + 1) * WINDOW - time.time() + 0.01))
