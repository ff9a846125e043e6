"""``bench/run.py``'s cached phase: plain requests and hits of the response cache through the same process.

One request is sent again and again to ``mock-cached``, a route with the cache on, alternating with the plain
request at the same concurrency: the CPU per request of a hit beside the plain path's. The run fails if the
request is not answered from the cache.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import TYPE_CHECKING, Any

from bench.data import BenchError
from bench.load import averaged

if TYPE_CHECKING:
    from bench.run import Bench, Server

MESSAGES = [{"role": "user", "content": "Say hello."}]  # as bench/run.py's plain request
CACHED_BODY = json.dumps({"model": "mock-cached", "messages": MESSAGES}).encode()
CONCURRENCY, ROUNDS = 16, 2  # plain requests and cache hits, alternating, this many phases each


async def measure(bench: Bench) -> dict[str, object]:
    await asyncio.to_thread(confirm_hit, bench.tollgate)
    bench.tollgate_answers += 2
    phases: dict[str, list[dict[str, Any]]] = {"plain": [], "hits": []}
    for _ in range(ROUNDS):
        phases["plain"].append(await bench.phase(bench.tollgate, CONCURRENCY))
        phases["hits"].append(await bench.phase(bench.tollgate, CONCURRENCY, CACHED_BODY))
    return {"concurrency": CONCURRENCY, "rounds": ROUNDS, **averaged(phases)}


def confirm_hit(server: Server) -> None:
    """Send the cached phase's request twice: the second must be answered from the cache."""
    for _ in range(2):
        request = urllib.request.Request(server.url, data=CACHED_BODY, headers=server.headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            state = response.headers.get("x-tollgate-cache")
    if state != "hit":
        raise BenchError(f"the cached phase's request was not answered from the cache (x-tollgate-cache: {state})")
