"""The load generator behind bench/run.py: closed-loop async clients on one keep-alive httpx pool.

``hammer`` keeps ``concurrency`` requests in flight for a number of seconds (each worker sends its next
request as soon as the previous answer is read) and records latencies; ``stream_rounds`` opens waves of
concurrent streams and times the first ``data:`` line and the whole stream. Only 127.0.0.1 is ever called.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import httpx

OVERHEAD_HEADER = "x-tollgate-overhead-ms"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of the values, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def new_client(concurrency: int) -> httpx.AsyncClient:
    """A client whose pool holds one kept-alive connection per worker, with no pool waits."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=60.0)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0))


@dataclass
class Phase:
    """What one target answered to a fixed number of concurrent workers."""

    target: str
    concurrency: int
    seconds: float = 0.0
    ok: int = 0
    errors: int = 0
    exceptions: int = 0  # errors without any answer: connection failures and timeouts
    first_error: str = ""
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    overheads_ms: list[float] = field(default_factory=list, repr=False)
    missing_overhead: int = 0  # 200 answers without the overhead header (only counted for Tollgate)

    @property
    def responses(self) -> int:
        """Requests that got an answer of any status (exceptions excluded)."""
        return self.ok + self.errors - self.exceptions

    def error(self, message: str, *, exception: bool = False) -> None:
        self.errors += 1
        self.exceptions += exception
        self.first_error = self.first_error or message

    def summary(self) -> dict[str, object]:
        return {
            "target": self.target, "concurrency": self.concurrency, "seconds": round(self.seconds, 3),
            "requests": self.ok, "errors": self.errors, "first_error": self.first_error,
            "rps": round(self.ok / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": percentile(self.latencies_ms, 0.50), "p99_ms": percentile(self.latencies_ms, 0.99),
            "overhead_p50_ms": percentile(self.overheads_ms, 0.50), "missing_overhead": self.missing_overhead,
        }


async def hammer(
    client: httpx.AsyncClient, url: str, *, headers: dict[str, str], body: bytes, concurrency: int, seconds: float,
    target: str,
) -> Phase:
    """Keep ``concurrency`` non-streaming requests in flight for ``seconds``. Non-200 and exceptions are errors."""
    phase = Phase(target=target, concurrency=concurrency)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as e:
                phase.error(f"{type(e).__name__}: {e}", exception=True)
                continue
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                phase.error(f"HTTP {response.status_code}: {response.text[:200]}")
                continue
            phase.ok += 1
            phase.latencies_ms.append(elapsed)
            if (overhead := overhead_ms(response)) is None:
                phase.missing_overhead += 1
            else:
                phase.overheads_ms.append(overhead)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - started
    return phase


def overhead_ms(response: httpx.Response) -> float | None:
    """Tollgate's own time for the request from its response header, or None when absent or malformed."""
    try:
        return float(response.headers[OVERHEAD_HEADER])
    except (KeyError, ValueError):
        return None


@dataclass
class Streams:
    """Waves of concurrent streams against one target."""

    target: str
    concurrency: int
    rounds: int
    ok: int = 0
    errors: int = 0
    exceptions: int = 0
    first_error: str = ""
    ttfb_ms: list[float] = field(default_factory=list, repr=False)
    total_ms: list[float] = field(default_factory=list, repr=False)
    overheads_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def responses(self) -> int:
        return self.ok + self.errors - self.exceptions

    def error(self, message: str, *, exception: bool = False) -> None:
        self.errors += 1
        self.exceptions += exception
        self.first_error = self.first_error or message

    def summary(self) -> dict[str, object]:
        return {
            "target": self.target, "concurrency": self.concurrency, "rounds": self.rounds, "streams": self.ok,
            "errors": self.errors, "first_error": self.first_error,
            "ttfb_p50_ms": percentile(self.ttfb_ms, 0.50), "ttfb_p99_ms": percentile(self.ttfb_ms, 0.99),
            "total_p50_ms": percentile(self.total_ms, 0.50), "overhead_p50_ms": percentile(self.overheads_ms, 0.50),
        }


async def stream_rounds(
    client: httpx.AsyncClient, url: str, *, headers: dict[str, str], body: bytes, concurrency: int, rounds: int,
    target: str,
) -> Streams:
    """Run ``rounds`` waves of ``concurrency`` streams; a stream without 200 or without ``[DONE]`` is an error."""
    result = Streams(target=target, concurrency=concurrency, rounds=rounds)

    async def one() -> None:
        started = time.perf_counter()
        first: float | None = None
        done = False
        try:
            async with client.stream("POST", url, content=body, headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    result.error(f"HTTP {response.status_code}: {response.text[:200]}")
                    return
                if (overhead := overhead_ms(response)) is not None:
                    result.overheads_ms.append(overhead)
                async for line in response.aiter_lines():
                    if first is None and line.startswith("data:"):
                        first = time.perf_counter()
                    done = done or line == "data: [DONE]"
        except httpx.HTTPError as e:
            result.error(f"{type(e).__name__}: {e}", exception=True)
            return
        if not done or first is None:
            result.error("stream ended without data: [DONE]")
            return
        result.ok += 1
        result.ttfb_ms.append((first - started) * 1000)
        result.total_ms.append((time.perf_counter() - started) * 1000)

    for _ in range(rounds):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    return result
