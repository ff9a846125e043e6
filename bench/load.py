"""The load generator behind bench/run.py: closed-loop workers, each on its own kept-alive HTTP/1.1 connection.

``hammer`` keeps ``concurrency`` requests in flight for a number of seconds (each worker sends its next
request as soon as the previous answer is read) and records latencies; ``repeat_until`` does the same until
told to stop, as background load for another phase; ``stream_rounds`` opens waves of concurrent streams and
times the first ``data:`` line and the whole stream. Only 127.0.0.1 is called.

Why not httpx: on this 2-core machine an httpx.AsyncClient spent 1.3 ms of CPU per request at concurrency 1
and 11 ms at concurrency 64 (0.97 and 3.9 ms with one client per worker), more than the mock upstream it was
measuring, so the "mock alone" column measured the client. The few lines of HTTP/1.1 below (Content-Length
and chunked bodies, nothing else is needed for two local uvicorn servers) cost about 0.1 ms per request.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

OVERHEAD_HEADER = "x-tollgate-overhead-ms"
TIMEOUT = 30.0
# What a failed request raises: refused or reset connections, early EOF, timeouts, unparsable answers.
REQUEST_ERRORS = (OSError, EOFError, asyncio.LimitOverrunError, TimeoutError, ValueError)


def mean(values: list[Any]) -> float | None:
    present = [v for v in values if isinstance(v, (int, float))]
    return round(sum(present) / len(present), 3) if present else None


def averaged(phases: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """For each label, the mean of its phases' figures and the sum of their errors (phases run alternately)."""
    results: dict[str, dict[str, Any]] = {}
    for label, runs in phases.items():
        results[label] = {name: mean([run[name] for run in runs])
                          for name in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request", "overhead_p50_ms")}
        results[label]["errors"] = sum(run["errors"] for run in runs)
    return results


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of the values, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)


@dataclass(frozen=True)
class Request:
    """One POST, encoded once and sent many times."""

    host: str
    port: int
    raw: bytes

    @classmethod
    def post(cls, url: str, *, headers: dict[str, str], body: bytes) -> Request:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        lines = [f"POST {parts.path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return cls(host=host, port=port, raw="\r\n".join(lines).encode() + b"\r\n\r\n" + body)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """A kept-alive connection, opened on first use and again after an error or ``connection: close``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: Request, on_data: Callable[[bytes], None] | None = None) -> Answer:
        """Send the request and read the whole answer, passing each piece of body to ``on_data``. Raises REQUEST_ERRORS."""
        try:
            async with asyncio.timeout(TIMEOUT):
                return await self._exchange(request, on_data)
        except BaseException:
            self.close()  # whatever state the connection was left in, it is not reusable
            raise

    async def _exchange(self, request: Request, on_data: Callable[[bytes], None] | None) -> Answer:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request.raw)
        head = (await self.reader.readuntil(b"\r\n\r\n"))[:-4].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
        pieces: list[bytes] = []
        if "content-length" in headers:
            pieces.append(await self.reader.readexactly(int(headers["content-length"])))
            if on_data:
                on_data(pieces[-1])
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                pieces.append((await self.reader.readexactly(size + 2))[:-2])
                if on_data:
                    on_data(pieces[-1])
            await self.reader.readexactly(2)  # the blank line after the last chunk (our servers send no trailers)
        else:
            raise ValueError("answer has neither content-length nor chunked transfer-encoding")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Answer(status=status, headers=headers, body=b"".join(pieces))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Pool:
    """One connection per worker, kept across a warm-up and the measured phase that follows it."""

    def __init__(self, request: Request, size: int) -> None:
        self.request = request
        self.connections = [Connection(request.host, request.port) for _ in range(size)]

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for connection in self.connections:
            connection.close()


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
    spans: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (sent, answered) of each 200
    overheads_ms: list[float] = field(default_factory=list, repr=False)
    missing_overhead: int = 0  # 200 answers without a readable overhead header

    @property
    def answered(self) -> int:
        """Requests that got a whole answer of any status."""
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


def overhead_ms(answer: Answer) -> float | None:
    """Tollgate's own time for the request from its response header, or None when absent or malformed."""
    try:
        return float(answer.headers[OVERHEAD_HEADER])
    except (KeyError, ValueError):
        return None


async def send_one(phase: Phase, connection: Connection, request: Request) -> None:
    """Send the request once and record its latency or error in the phase. Non-200 and exceptions are errors."""
    started = time.perf_counter()
    try:
        answer = await connection.send(request)
    except REQUEST_ERRORS as e:
        phase.error(f"{type(e).__name__}: {e}", exception=True)
        return
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status != 200:
        phase.error(f"HTTP {answer.status}: {answer.body[:200].decode(errors='replace')}")
        return
    phase.ok += 1
    phase.latencies_ms.append(elapsed)
    phase.spans.append((started, started + elapsed / 1000))
    if (overhead := overhead_ms(answer)) is None:
        phase.missing_overhead += 1
    else:
        phase.overheads_ms.append(overhead)


def overlapping(phase: Phase, others: Phase) -> Phase:
    """The part of ``phase`` whose requests were in flight at the same time as one of ``others``' requests."""
    during = Phase(target=phase.target, concurrency=phase.concurrency, seconds=phase.seconds)
    windows = sorted(others.spans)
    for (sent, answered), latency in zip(phase.spans, phase.latencies_ms):
        if any(start < answered and sent < end for start, end in windows):
            during.ok += 1
            during.latencies_ms.append(latency)
            during.spans.append((sent, answered))
    return during


async def hammer(pool: Pool, *, seconds: float, target: str) -> Phase:
    """Keep one request per pooled connection in flight for ``seconds``. Non-200 and exceptions are errors."""
    phase = Phase(target=target, concurrency=len(pool.connections))
    deadline = time.perf_counter() + seconds

    async def worker(connection: Connection) -> None:
        while time.perf_counter() < deadline:
            await send_one(phase, connection, pool.request)

    started = time.perf_counter()
    await asyncio.gather(*(worker(connection) for connection in pool.connections))
    phase.seconds = time.perf_counter() - started
    return phase


async def repeat_until(pool: Pool, stop: asyncio.Event, *, target: str, pause: float = 0.0) -> Phase:
    """Like ``hammer``, until ``stop`` is set, waiting ``pause`` seconds after each answer; the requests in flight
    then are finished and counted."""
    phase = Phase(target=target, concurrency=len(pool.connections))

    async def worker(connection: Connection) -> None:
        while not stop.is_set():
            await send_one(phase, connection, pool.request)
            if pause:
                try:
                    await asyncio.wait_for(stop.wait(), pause)
                except asyncio.TimeoutError:
                    pass

    started = time.perf_counter()
    await asyncio.gather(*(worker(connection) for connection in pool.connections))
    phase.seconds = time.perf_counter() - started
    return phase


@dataclass
class Streams(Phase):
    """Waves of concurrent streams against one target: time to the first ``data:`` line and to ``[DONE]``."""

    rounds: int = 0
    ttfb_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, object]:
        return {
            "target": self.target, "concurrency": self.concurrency, "rounds": self.rounds, "streams": self.ok,
            "errors": self.errors, "first_error": self.first_error,
            "ttfb_p50_ms": percentile(self.ttfb_ms, 0.50), "ttfb_p99_ms": percentile(self.ttfb_ms, 0.99),
            "total_p50_ms": percentile(self.latencies_ms, 0.50), "overhead_p50_ms": percentile(self.overheads_ms, 0.50),
        }


async def stream_rounds(pool: Pool, *, rounds: int, target: str) -> Streams:
    """Run ``rounds`` waves of one stream per pooled connection; a stream without 200 or ``[DONE]`` is an error."""
    result = Streams(target=target, concurrency=len(pool.connections), rounds=rounds)

    async def one(connection: Connection) -> None:
        started = time.perf_counter()
        first: list[float] = []
        done: list[float] = []

        def on_data(piece: bytes) -> None:
            if not first and b"data:" in piece:
                first.append(time.perf_counter())
            # The stream is over for an SDK when [DONE] arrives; what follows is connection bookkeeping.
            if not done and b"data: [DONE]" in piece:
                done.append(time.perf_counter())

        try:
            answer = await connection.send(pool.request, on_data)
        except REQUEST_ERRORS as e:
            result.error(f"{type(e).__name__}: {e}", exception=True)
            return
        if answer.status != 200 or not first or b"data: [DONE]" not in answer.body:
            result.error(f"HTTP {answer.status} without data: [DONE]: {answer.body[-200:].decode(errors='replace')}")
            return
        result.ok += 1
        result.ttfb_ms.append((first[0] - started) * 1000)
        result.latencies_ms.append(((done[0] if done else time.perf_counter()) - started) * 1000)
        if (overhead := overhead_ms(answer)) is not None:
            result.overheads_ms.append(overhead)

    started = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(one(connection) for connection in pool.connections))
    result.seconds = time.perf_counter() - started
    return result
