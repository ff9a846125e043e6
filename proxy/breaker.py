"""The circuit breaker of every deployment, one for the whole fleet of processes.

closed -> open after TOLLGATE_BREAKER_FAILURES failures within TOLLGATE_BREAKER_WINDOW_SECONDS -> half-open once
TOLLGATE_BREAKER_COOLDOWN_SECONDS have passed, when exactly one request in the fleet may probe it (a claim with an
expiry) -> the probe's success closes it, its failure opens it for another cool-down.

Redis (TOLLGATE_MONEY_REDIS_URL, no eviction) holds per deployment a state hash, the times of recent failures and the
probe claim, all tagged ``{breaker:<id>}`` so each script touches one slot (Redis Cluster); an index hash lists the
deployments that are not closed. Each process copies that index into its mirror once a second (proxy/upkeep.py), and
requests read only the mirror: routing costs no I/O. A success costs nothing while its deployment is closed; a
failure is one script run off the request (a task), and the process that sees it updates its own mirror at once.

Without Redis (the embedded default is one process), or while Redis cannot be reached, the same rules run on this
process's mirror alone: the breaker never fails a request because its shared state cannot be read.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from billing import scripts
from billing.scripts import Call

from . import outages
from .breaker_scripts import CLAIM, FAIL, INDEX, INDEX_DROP, INDEX_READ, INDEX_SET, SUCCEED, keys

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
STATE_NUMBERS = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}  # the metrics gauge's values
RETRY_SECONDS = 1.0  # after Redis failed, go on alone this long before trying it again (the upkeep tries every second)
REDIS_TIMEOUT = 2.0  # a Redis that hangs counts as down: the breaker's calls never hold up the upkeep for long
STATE_TTL = 86400  # a breaker no request looks at any more is forgotten after a day (then it is closed)


@dataclass
class Entry:
    """A deployment that is not closed: open until ``until`` (epoch seconds), half-open after."""

    until: float
    failures: int  # failures within the window when it tripped
    trips: int = 1  # openings since it was last closed (the trip, then each failed probe)
    raw: str = ""  # ``until`` as Redis holds it, to recognise this opening in the index

    def index_value(self) -> str:
        return f"{self.raw}|{self.failures}|{self.trips}"


@dataclass(frozen=True)
class Status:
    state: str  # closed, open or half-open
    failures: int  # failures within the window (closed), or those that tripped it
    reopens_at: float | None = None  # epoch seconds when an open breaker lets a probe through
    trips: int = 0


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(result: list[Any]) -> Entry:
    raw = _decode(result[1])
    return Entry(until=float(raw), failures=int(result[2]), trips=int(result[3]), raw=raw)


class Breaker:
    """One process's view of every deployment's breaker: its mirror, and the calls that keep the fleet's in step."""

    def __init__(self, redis_url: str | None, *, clock: Callable[[], float] = time.time) -> None:
        self.url = redis_url
        self.clock = clock  # wall-clock seconds: reopen times are compared across processes and hosts
        self.mirror: dict[int, Entry] = {}
        self.failures: dict[int, list[float]] = {}  # this process's recent failure times, for deciding alone
        self.probe_out: dict[int, float] = {}  # deciding alone: a probe was let through, until then
        self.won: dict[int, float] = {}  # probe claims this process won in Redis and has not used yet
        self.claiming: set[int] = set()
        self.trips: dict[int, int] = {}  # openings this process caused, per deployment (a metrics counter)
        self.down_until = 0.0  # monotonic: Redis failed; decide alone until then
        self.tasks: set[asyncio.Task[Any]] = set()
        self.claimant = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    # --- per request: no I/O

    def is_healthy(self, deployment_id: int) -> bool:
        """Whether routing may send a request to the deployment now (a half-open one: to one request only)."""
        entry = self.mirror.get(deployment_id)
        if entry is None:
            return True
        now = self.clock()
        if now < entry.until:
            return False
        if self.won.pop(deployment_id, 0.0) > now:
            return True  # this process holds the fleet's one probe: this request is it
        if self.shared():
            self.spawn(deployment_id, self.claim, self.claiming)  # a later request here may be the probe
            return False
        if self.probe_out.get(deployment_id, 0.0) > now:
            return False
        self.probe_out[deployment_id] = now + self.probe_seconds()
        return True

    def probing(self, deployment_id: int) -> bool:
        """Whether the deployment is not closed: if is_healthy() just let a request through, that request is its probe."""
        return deployment_id in self.mirror

    def report(self, deployment_id: int, *, ok: bool) -> None:
        """Note one attempt's outcome; any Redis work runs in a task of its own."""
        if ok:
            if deployment_id in self.mirror:  # closed (the plain path): nothing to do, nothing to send
                self.succeeded(deployment_id)
            return
        now = self.clock()
        self.fail_here(deployment_id, now)
        if self.shared():
            self.spawn(deployment_id, lambda i: self.share_failure(i, now))

    def state(self, deployment_id: int) -> str:
        """closed, open or half-open, as this process sees it (no side effect: for metrics and pages)."""
        entry = self.mirror.get(deployment_id)
        if entry is None:
            return CLOSED
        return OPEN if self.clock() < entry.until else HALF_OPEN

    def status(self, deployment_id: int) -> Status:
        entry = self.mirror.get(deployment_id)
        if entry is None:
            window = self.clock() - settings.TOLLGATE_BREAKER_WINDOW_SECONDS
            return Status(CLOSED, sum(1 for t in self.failures.get(deployment_id, ()) if t >= window))
        return Status(self.state(deployment_id), entry.failures, entry.until, entry.trips)

    # --- deciding in this process

    def fail_here(self, deployment_id: int, now: float) -> None:
        alone = not self.shared()  # with Redis, the script's answer counts the fleet's trips
        entry = self.mirror.get(deployment_id)
        if entry is not None:
            if now >= entry.until:  # the probe failed: another cool-down
                entry.until, entry.trips = now + settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS, entry.trips + 1
                self.probe_out.pop(deployment_id, None)
                if alone:
                    self.count_trip(deployment_id)
            return
        since = now - settings.TOLLGATE_BREAKER_WINDOW_SECONDS
        times = [t for t in self.failures.get(deployment_id, ()) if t >= since] + [now]
        if len(times) < settings.TOLLGATE_BREAKER_FAILURES:
            self.failures[deployment_id] = times
            return
        self.failures.pop(deployment_id, None)
        self.mirror[deployment_id] = Entry(now + settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS, len(times))
        if alone:
            self.count_trip(deployment_id)

    def succeeded(self, deployment_id: int) -> None:
        entry = self.mirror[deployment_id]
        now = self.clock()
        if now < entry.until:
            return  # an answer to a request sent before the trip proves little: wait for the probe
        self.forget(deployment_id)
        if self.shared():
            self.spawn(deployment_id, lambda i: self.share_success(i, now, entry))

    def forget(self, deployment_id: int) -> None:
        for held in (self.mirror, self.failures, self.probe_out, self.won):
            held.pop(deployment_id, None)  # type: ignore[attr-defined]

    def count_trip(self, deployment_id: int) -> None:
        self.trips[deployment_id] = self.trips.get(deployment_id, 0) + 1

    def probe_seconds(self) -> float:
        # A probe that never reports (its request went elsewhere, or its process died) frees the claim after this.
        return float(settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS)

    # --- sharing with the fleet

    def shared(self) -> bool:
        return bool(self.url) and time.monotonic() >= self.down_until

    def spawn(self, deployment_id: int, work: Callable[[int], Coroutine[Any, Any, None]],
              busy: set[int] | None = None) -> None:
        """Run ``work(deployment_id)`` in a task of the running loop; nothing when there is no loop (sync callers)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if busy is not None:
            if deployment_id in busy:
                return
            busy.add(deployment_id)
        task = loop.create_task(work(deployment_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if busy is not None:
            task.add_done_callback(lambda _: busy.discard(deployment_id))

    async def drain(self) -> None:
        """Wait for the Redis work under way (tests, graceful shutdown)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def run(self, *calls: Call) -> list[Any] | None:
        """The scripts' results, or None when Redis cannot be reached (logged once per outage: this process goes on
        deciding alone, and tries Redis again after RETRY_SECONDS)."""
        assert self.url
        try:
            results = await asyncio.wait_for(scripts.run(self.url, list(calls)), timeout=REDIS_TIMEOUT)
        except Exception as e:
            if outages.dependency_of(e) is None and not isinstance(e, asyncio.TimeoutError):
                raise
            outages.note("redis", e)
            self.down_until = time.monotonic() + RETRY_SECONDS
            return None
        self.down_until = 0.0
        return results

    async def share_failure(self, deployment_id: int, now: float) -> None:
        args = [repr(now), settings.TOLLGATE_BREAKER_WINDOW_SECONDS, settings.TOLLGATE_BREAKER_FAILURES,
                settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS, f"{now!r}:{secrets.token_hex(4)}", STATE_TTL]
        results = await self.run(Call(FAIL, keys(deployment_id), args))
        if results is None or int(results[0][0]) == 0:
            return
        code, entry = int(results[0][0]), _entry(results[0])
        known = self.mirror.get(deployment_id)
        self.mirror[deployment_id] = entry
        if code in (2, 3):
            self.count_trip(deployment_id)
            self.won.pop(deployment_id, None)
        if code != 1 or known is None or known.raw != entry.raw:
            await self.run(Call(INDEX_SET, [INDEX], [deployment_id, entry.index_value()]))

    async def share_success(self, deployment_id: int, now: float, entry: Entry) -> None:
        results = await self.run(Call(SUCCEED, keys(deployment_id), [repr(now)]))
        if results is None:
            return
        if int(results[0][0]) == 1:  # another process reopened it meanwhile: keep it open here too
            self.mirror[deployment_id] = _entry(results[0])
            return
        if entry.raw:
            await self.run(Call(INDEX_DROP, [INDEX], [deployment_id, entry.raw]))

    async def claim(self, deployment_id: int) -> None:
        """Try to become the fleet's one probe of a half-open deployment."""
        [state, _, probe] = keys(deployment_id)
        now = self.clock()
        millis = int(self.probe_seconds() * 1000)
        results = await self.run(Call(CLAIM, [state, probe], [repr(now), millis, self.claimant]))
        if results is None:
            return
        code = int(results[0][0])
        if code == 0:  # closed in Redis: the index entry was stale
            stale = self.mirror.pop(deployment_id, None)
            if stale is not None and stale.raw:
                await self.run(Call(INDEX_DROP, [INDEX], [deployment_id, stale.raw]))
            return
        self.mirror[deployment_id] = _entry(results[0])
        if code == 3:
            self.won[deployment_id] = now + self.probe_seconds()

    async def refresh(self) -> None:
        """Copy the fleet's list of deployments that are not closed into the mirror (the upkeep, every second)."""
        if not self.url:
            return
        results = await self.run(Call(INDEX_READ, [INDEX], []))
        if results is None:
            return
        pairs = results[0]
        fresh: dict[int, Entry] = {}
        for name, value in zip(pairs[0::2], pairs[1::2]):
            try:
                raw, failures, trips = _decode(value).split("|")
                fresh[int(_decode(name))] = Entry(float(raw), int(failures), int(trips), raw)
            except ValueError:
                continue  # not ours: never let a stray field stop the refresh
        self.mirror = fresh
        for deployment_id in [d for d in self.won if d not in fresh]:
            del self.won[deployment_id]


_breaker: Breaker | None = None


def get() -> Breaker:
    """This process's breaker (made on first use, from the settings)."""
    global _breaker
    if _breaker is None:
        _breaker = Breaker(settings.TOLLGATE_MONEY_REDIS_URL or None)
    return _breaker


def reset_breaker() -> None:
    """Forget this process's breaker (tests switch settings)."""
    global _breaker
    _breaker = None


_clients: dict[str, Any] = {}


def _client(url: str) -> Any:
    """A synchronous client for the admin and the health page, with short timeouts: a page must not hang on Redis."""
    if url not in _clients:
        _clients[url] = scripts.sync_client(url, socket_connect_timeout=2, socket_timeout=2)  # a cluster's, if one
    return _clients[url]


def statuses(deployment_ids: Iterable[int]) -> tuple[dict[int, Status], str]:
    """Each deployment's breaker as the fleet sees it, and where that came from ("redis" or "this process": without
    Redis, or while it cannot be read). Synchronous: for the admin and the health page."""
    ids = list(deployment_ids)
    breaker = get()
    if breaker.url:
        try:
            return _read(breaker.url, ids, breaker.clock()), "redis"
        except Exception as e:
            if outages.dependency_of(e) is None:
                raise
            outages.note("redis", e)
    return {i: breaker.status(i) for i in ids}, "this process"


def _read(url: str, ids: list[int], now: float) -> dict[int, Status]:
    pipe = _client(url).pipeline(transaction=False)
    since = now - settings.TOLLGATE_BREAKER_WINDOW_SECONDS
    for deployment_id in ids:
        state, fails, _ = keys(deployment_id)
        pipe.hmget(state, "until", "failures", "trips")
        pipe.zcount(fails, since, "+inf")
    answers = pipe.execute()
    found: dict[int, Status] = {}
    for deployment_id, (held, recent) in zip(ids, zip(answers[0::2], answers[1::2])):
        until, failures, trips = held
        if until is None:
            found[deployment_id] = Status(CLOSED, int(recent))
        else:
            reopens = float(_decode(until))
            found[deployment_id] = Status(OPEN if now < reopens else HALF_OPEN, int(failures or 0), reopens,
                                          int(trips or 1))
    return found


def reset(deployment_id: int) -> str:
    """Close the deployment's breaker: here at once, in the other processes within a second. Returns where it was
    reset ("everywhere", or "this process" when Redis cannot be reached)."""
    breaker = get()
    breaker.forget(deployment_id)
    if not breaker.url:
        return "everywhere"  # one process
    try:
        client = _client(breaker.url)
        client.delete(*keys(deployment_id))
        client.hdel(INDEX, str(deployment_id))
    except Exception as e:
        if outages.dependency_of(e) is None:
            raise
        outages.note("redis", e)
        return "this process"
    return "everywhere"
