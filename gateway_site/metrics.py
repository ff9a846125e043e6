"""Prometheus metrics: GET /metrics, in Prometheus's text format, summed over every process of the host.

Each process (uvicorn workers, Celery workers) writes its counters and histograms to files of its own in
TOLLGATE_METRICS_DIR (prometheus_client's multiprocess mode); a scrape, answered by whichever process gets it,
reads them all. Values that live outside the processes (Redis, the database, the broker, the journal directory) are
read at scrape time, off the event loop, each with a short timeout: a source that fails is left out of that scrape
and counted in tollgate_metrics_source_errors_total{source}, and the scrape still answers 200.

/metrics is answered in asgi.py before Django (no host check, no middleware) and needs the ops bearer token
(TOLLGATE_OPS_TOKEN). With TOLLGATE_METRICS_BIND set, each serving process also listens on that address, which
serves /metrics with no token: bind it where only Prometheus reaches it. A Celery worker's main process does the same
(gateway_site/celery.py), for a worker whose metrics directory no serving process reads (its own container).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from django.conf import settings

from . import ops

PATH = "/metrics"
SOURCE_TIMEOUT_SECONDS = 2.0  # a scrape waits at most this long for each outside source

logger = logging.getLogger(__name__)


# --- the shared directory


def prepare(directory: Path) -> None:
    """Point prometheus_client at ``directory`` and remove what dead processes left there.

    Call before this process creates any metric: prometheus_client picks its value storage from
    PROMETHEUS_MULTIPROC_DIR when a metric is built."""
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    clean(directory, own_pid=os.getpid())
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:  # prometheus_client was imported before the variable was set
        values.ValueClass = values.MultiProcessValue()


def pid_of(path: Path) -> int | None:
    """The process id in a prometheus_client file name (counter_1234.db, gauge_livesum_1234.db)."""
    tail = path.stem.rpartition("_")[2]
    return int(tail) if tail.isdigit() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def clean(directory: Path, *, own_pid: int) -> int:
    """Remove the files of processes that are gone. Returns how many were removed.

    When no other live process writes here (a fresh start), every dead process's file goes. While others run (one
    worker restarted beside the rest), only the dead process's live gauges go: its counters stay, so the sums a
    scrape reports never go down, which Prometheus would read as a reset and count everything again. A file with
    this process's own id is from an earlier process that had the same id, and goes too.
    """
    files = [(path, pid_of(path)) for path in directory.glob("*.db")]
    others_alive = any(pid is not None and pid != own_pid and alive(pid) for _, pid in files)
    removed = 0
    for path, pid in files:
        if pid is None:
            continue
        stale = pid == own_pid or (not alive(pid) and (not others_alive or path.name.startswith("gauge_live")))
        if stale:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def forget_dead_live_gauges(directory: Path) -> None:
    """Drop the live gauges (in flight, spooled rows) of processes that died since they were written."""
    for path in directory.glob("gauge_live*.db"):
        pid = pid_of(path)
        if pid is not None and not alive(pid):
            path.unlink(missing_ok=True)


# --- sources read at scrape time


class Source:
    """One outside value, read in a worker thread with a timeout, and cached for ``ttl`` seconds."""

    _pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="metrics-source")

    def __init__(self, name: str, read: Callable[[], Any], ttl: float = 0.0) -> None:
        self.name, self.read, self.ttl = name, read, ttl
        self.value: Any = None
        self.read_at = float("-inf")
        self.running: concurrent.futures.Future[Any] | None = None
        self.failing = False
        self.lock = threading.Lock()

    def get(self, timeout: float = SOURCE_TIMEOUT_SECONDS) -> Any:
        """The cached value while fresh, else a new reading; None (and one error counted) if the source fails."""
        with self.lock:
            if time.monotonic() - self.read_at < self.ttl:
                return self.value
            if self.running is None:
                self.running = self._pool.submit(self._read)
            running = self.running
        try:
            value = running.result(timeout)
        except Exception as e:  # a timeout, Redis or the database down, a broker that does not answer
            source_errors().labels(self.name).inc()
            if not self.failing:  # once per outage, not once per scrape
                logger.warning("metrics: %s cannot be read (%s); left out of scrapes until it can", self.name,
                               type(e).__name__)
            self.failing = True
            return None
        finally:
            with self.lock:
                if running.done() and self.running is running:
                    self.running = None
        with self.lock:
            self.value, self.read_at, self.failing = value, time.monotonic(), False
        return value

    def _read(self) -> Any:
        try:
            return self.read()
        finally:
            from django.db import connections

            connections.close_all()  # this thread's connections only; the pool takes them back


def journal_backlog_bytes() -> int:
    """Bytes in the ledger's journal files on this host: rows and settlements not yet done, or still being written."""
    total = 0
    for path in Path(settings.TOLLGATE_JOURNAL_DIR).glob("*.journal"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass  # retired meanwhile
    return total


def holds_outstanding() -> int:
    """Budget holds of requests in flight: the tenants' lease sets in Redis, or the open reservation rows without
    Redis."""
    from billing import holds

    backend = holds.backend()
    if isinstance(backend, holds.RedisBackend):
        from billing import scripts

        client = scripts.sync_client(backend.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            return backend.open_holds(client)
        finally:
            client.close()
    from billing.models import Reservation

    return Reservation.objects.filter(state=Reservation.State.OPEN).count()


def budgets_near_limit() -> dict[str, int]:
    """How many active budgets have spent at least 80 and 100 percent of their amount this period."""
    from django.utils import timezone

    from billing import budgets, holds

    now, counts = timezone.now(), {"80": 0, "100": 0}
    backend = holds.backend()
    for specs in budgets.load_table().by_tenant.values():
        for spec in specs:
            starts_at, _ = budgets.period_bounds(spec.period, spec.zone, now)
            spent, _ = backend.totals(spec, starts_at)
            if spent * 100 >= spec.limit_micros * 80:
                counts["80"] += 1
            if spent >= spec.limit_micros:
                counts["100"] += 1
    return counts


def celery_queue_depths() -> dict[str, int]:
    from .celery_status import queue_depths

    return queue_depths()


def beat_heartbeat_age() -> float | None:
    from .celery_status import beat_heartbeat_age

    return beat_heartbeat_age()


def batch_queues() -> dict[str, Any]:
    """Per batch queue: lines waiting, running, succeeded and failed, and batches per status (two grouped queries)."""
    from batches import stats

    found = stats.queue_stats().queues
    return {"lines": {queue: {"waiting": c.depth, "running": c.running, "succeeded": c.done, "failed": c.failed}
                      for queue, c in found.items()},
            "batches": {queue: c.batches for queue, c in found.items()}}


SOURCES = {
    "journal": Source("journal", journal_backlog_bytes),
    "holds": Source("holds", holds_outstanding),
    "celery": Source("celery", celery_queue_depths, ttl=10.0),
    "budgets": Source("budgets", budgets_near_limit, ttl=30.0),
    "beat": Source("beat", beat_heartbeat_age, ttl=10.0),
    "batches": Source("batches", batch_queues, ttl=10.0),
}


class SourceCollector:
    """The gauges read at scrape time, by the process that answers the scrape."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        backlog = SOURCES["journal"].get()
        if backlog is not None:
            yield GaugeMetricFamily("tollgate_journal_backlog_bytes", "Bytes in this host's ledger journal files.",
                                    value=backlog)
        held = SOURCES["holds"].get()
        if held is not None:
            yield GaugeMetricFamily("tollgate_budget_holds_outstanding",
                                    "Budget holds of requests in flight (Redis lease set, or open reservations).",
                                    value=held)
        depths = SOURCES["celery"].get()
        if depths is not None:
            family = GaugeMetricFamily("tollgate_celery_queue_length", "Messages waiting in each Celery queue.",
                                       labels=["queue"])
            for queue, depth in sorted(depths.items()):
                family.add_metric([queue], depth)
            yield family
        age = SOURCES["beat"].get()
        if age is not None:  # None also when no scheduled task was ever sent: alert on its absence too
            yield GaugeMetricFamily("tollgate_beat_heartbeat_age_seconds",
                                    "Seconds since beat last sent a scheduled task (any beat process).", value=age)
        near = SOURCES["budgets"].get()
        if near is not None:
            family = GaugeMetricFamily("tollgate_budgets_near_limit",
                                       "Active budgets that spent at least this percentage of their amount this period.",
                                       labels=["threshold"])
            for threshold, count in near.items():
                family.add_metric([threshold], count)
            yield family
        yield from batch_families(SOURCES["batches"].get())


def batch_families(queues: dict[str, Any] | None) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    if queues is None:
        return
    lines = GaugeMetricFamily("tollgate_batch_lines", "Batch lines per queue: waiting (not claimed yet), running, "
                              "and succeeded or failed over every batch kept.", labels=["queue", "state"])
    for queue, states in sorted(queues["lines"].items()):
        for state, count in states.items():
            lines.add_metric([queue, state], count)
    yield lines
    batches = GaugeMetricFamily("tollgate_batches", "Batches per queue and status.", labels=["queue", "status"])
    for queue, statuses in sorted(queues["batches"].items()):
        for status, count in statuses.items():
            batches.add_metric([queue, status], count)
    yield batches


_source_errors: Any = None


def source_errors() -> Any:
    global _source_errors
    if _source_errors is None:
        from prometheus_client import Counter

        _source_errors = Counter("tollgate_metrics_source_errors", "Scrape-time sources that failed or timed out.",
                                 ["source"], registry=None)
    return _source_errors


# --- rendering and serving


def render() -> bytes:
    """The text exposition of every process's metrics, this process's process_* metrics and the sources.

    Sync and slow-ish (it reads files and outside sources): run it in a thread."""
    from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    forget_dead_live_gauges(directory)
    registry = CollectorRegistry()
    registry.register(SourceCollector())  # first: a source error it counts shows in this very scrape
    MultiProcessCollector(registry, path=str(directory))
    ProcessCollector(registry=registry)  # the answering process's own CPU, memory and file descriptors
    return generate_latest(registry)


def enabled() -> bool:
    return bool(settings.TOLLGATE_METRICS) and "PROMETHEUS_MULTIPROC_DIR" in os.environ


def refusal(authorization: bytes | None) -> tuple[int, str] | None:
    """Why /metrics on the main port is refused to this caller (status, message), or None to serve it."""
    if not enabled():
        return 404, "Metrics are off (TOLLGATE_METRICS)."
    if not settings.TOLLGATE_OPS_TOKEN:
        if settings.TOLLGATE_METRICS_BIND:
            return 404, f"Metrics are served on {settings.TOLLGATE_METRICS_BIND} (TOLLGATE_METRICS_BIND)."
        return 403, ("Metrics need TOLLGATE_OPS_TOKEN (then send Authorization: Bearer <token>) or "
                     "TOLLGATE_METRICS_BIND (a private address that serves them without a token).")
    if not ops.token_matches(authorization):
        return 401, "Send Authorization: Bearer <TOLLGATE_OPS_TOKEN> to read the metrics."
    return None


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    status, content_type, headers = 200, "", [(b"cache-control", b"no-store")]
    if scope["method"] not in ("GET", "HEAD"):
        status, body, headers = 405, error_body("GET or HEAD only."), [*headers, (b"allow", b"GET, HEAD")]
    elif (refused := refusal(header(scope, b"authorization"))) is not None:
        status, body = refused[0], error_body(refused[1])
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="tollgate-metrics"'))
    else:
        from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

        body, content_type = await asyncio.to_thread(render), CONTENT_TYPE_PLAIN_0_0_4
    headers += [(b"content-type", (content_type or "application/json").encode()),
                (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message}}).encode()


class BindHandler(BaseHTTPRequestHandler):
    """The TOLLGATE_METRICS_BIND listener: /metrics with no token, nothing else."""

    server_version = "tollgate-metrics"

    def do_GET(self) -> None:
        if self.path.partition("?")[0] != PATH:
            self.answer(404, b"Only /metrics is served here.\n", "text/plain; charset=utf-8")
            return
        from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

        try:
            self.answer(200, render(), CONTENT_TYPE_PLAIN_0_0_4)
        except Exception:
            logger.exception("metrics: rendering failed")
            self.answer(500, b"Rendering the metrics failed; see the server log.\n", "text/plain; charset=utf-8")

    def answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the log


class ReusePortServer(ThreadingHTTPServer):
    # Every worker of the host listens on the same address; the kernel hands each scrape to one of them, and any
    # one of them answers with the whole host's sums. A worker that dies leaves the others listening.
    daemon_threads = True

    def server_bind(self) -> None:
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


_bind_server: ReusePortServer | None = None


def start_bind_server() -> None:
    """Listen on TOLLGATE_METRICS_BIND in a daemon thread, when it is set and metrics are on. Called by the serving
    process (asgi.py) and a Celery worker's main process (celery.py) at startup; a listener that cannot bind is
    logged, and the process goes on."""
    global _bind_server
    address = settings.TOLLGATE_METRICS_BIND
    if not address or not enabled() or _bind_server is not None:
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    server_class = ReusePortServer
    if ":" in host:
        server_class = type("ReusePortServer6", (ReusePortServer,), {"address_family": socket.AF_INET6})
    try:
        _bind_server = server_class((host, int(port)), BindHandler)
    except OSError as e:
        logger.error("metrics: cannot listen on %s (%s); /metrics stays available with the ops token", address, e)
        return
    threading.Thread(target=_bind_server.serve_forever, name="metrics-bind", daemon=True).start()
