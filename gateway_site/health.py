"""Probes answered in asgi.py before Django sees the request: no allowed host needed (a probe calls 127.0.0.1 whatever
DJANGO_ALLOWED_HOSTS says), no HTTPS redirect, no sign-in, no log line.

- ``GET /health/live`` (and its older name ``/healthz``): 200 "ok" while the process serves HTTP. Touches nothing.
- ``GET /health/ready``: 200 when this process can serve requests: PostgreSQL answers, Redis answers (when
  REDIS_URL is set; and the money Redis, when TOLLGATE_MONEY_REDIS_URL names another one), no migration is unapplied, the ledger is not backed up, and (when configured) beat is not
  silent, and it has not got SIGTERM (it drains: gateway_site/drain.py); else 503. The JSON body names each check.
  The checks run in threads with a deadline, so a dead database gives 503 within CHECK_TIMEOUT seconds and never
  blocks the event loop; the answer is reused for CACHE_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway_site import drain

logger = logging.getLogger(__name__)

DRAINING_BODY = json.dumps({"status": "draining", "checks": {}}).encode()  # SIGTERM: take this process out
PATH = "/healthz"  # the older name of /health/live, kept for existing probes
LIVE_PATHS = frozenset({PATH, "/health/live"})
READY_PATH = "/health/ready"
PATHS = LIVE_PATHS | {READY_PATH}  # every path asgi.py hands to this module, before Django

CACHE_SECONDS = 1.0  # a probe every second costs one run of the checks per process
CHECK_TIMEOUT = 1.5  # each check's deadline; they run side by side, so this bounds the whole probe

Check = dict[str, Any]  # {"ok": bool, "ms": float, "error": str, ...details}; JSON as it is

# A few threads of our own: a hung database must not hold up Django's sync views or the /v1 database thread.
_executor = ThreadPoolExecutor(max_workers=6, thread_name_prefix="tollgate-health")
_inflight: dict[str, Future[Check]] = {}
_inflight_lock = threading.Lock()
_cache: tuple[float, int, bytes] | None = None  # (monotonic time, status, body) of the last readiness answer
_last_status: int | None = None
_migrated = False  # once no migration is unapplied, that stays true for the life of the process
_redis_clients: dict[str, Any] = {}


def describe(error: BaseException) -> str:
    """The error's type and message, without URLs, passwords or anything else from the configuration."""
    from django.conf import settings

    text = f"{type(error).__name__}: {error}"
    urls = [settings.REDIS_URL, settings.TOLLGATE_MONEY_REDIS_URL, settings.TOLLGATE_CACHE_REDIS_URL,
            settings.TOLLGATE_BROKER_URL, settings.TOLLGATE_CHANNELS_REDIS_URL]
    secrets = [settings.DATABASES["default"].get("PASSWORD") or "", *[urlsplit(url or "").password or "" for url in urls],
               settings.SECRET_KEY, getattr(settings, "TOLLGATE_OPS_TOKEN", "")]
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    text = re.sub(r"\b[a-z][a-z0-9+.-]*://\S+", "<url>", text, flags=re.IGNORECASE)
    text = re.sub(r"(password|passwd|pwd|token|secret)(\s*[=:]\s*)\S+", r"\1\2***", text, flags=re.IGNORECASE)
    return " ".join(text.split())[:200]


def _timed(check: Callable[[], Check]) -> Check:
    """Run one check in a health thread: time it, turn an exception into a failed check, give back its connection."""
    from django.db import connections

    started = time.perf_counter()
    try:
        result = check()
    except Exception as e:  # a probe reports failures, it never raises them
        result = {"ok": False, "error": describe(e)}
    finally:
        connections.close_all()  # this thread's only: back to the pool, or closed
    return {"ok": result.pop("ok"), "ms": round((time.perf_counter() - started) * 1000, 1), **result}


def _submit(name: str, check: Callable[[], Check]) -> Future[Check]:
    # A check still running from an earlier probe (a hung database) is waited on again, not started twice, so
    # probes during an outage never pile up threads.
    with _inflight_lock:
        running = _inflight.get(name)
        if running is None or running.done():
            running = _inflight[name] = _executor.submit(_timed, check)
        return running


async def run_checks(checks: dict[str, Callable[[], Check]], timeout: float = CHECK_TIMEOUT) -> dict[str, Check]:
    """Run the checks side by side in the health threads; one without an answer by the deadline has failed."""
    waiting = {name: asyncio.wrap_future(_submit(name, check)) for name, check in checks.items()}
    if waiting:
        await asyncio.wait(waiting.values(), timeout=timeout)
    return {name: future.result() if future.done() else
            {"ok": False, "ms": round(timeout * 1000, 1), "error": f"no answer within {timeout:g} s"}
            for name, future in waiting.items()}


def check_database() -> Check:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"ok": True}


def redis_client(url: str) -> Any:
    """A Redis client of its own with short timeouts and no retries: a probe must fail fast, not wait politely."""
    client = _redis_clients.get(url)
    if client is None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = _redis_clients[url] = redis.Redis.from_url(
            url, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT, retry=Retry(NoBackoff(), 0))
    return client


def check_redis() -> Check:
    from django.conf import settings

    redis_client(settings.REDIS_URL).ping()
    return {"ok": True}


def check_money_redis() -> Check:
    from django.conf import settings

    redis_client(settings.TOLLGATE_MONEY_REDIS_URL).ping()  # a cluster's node answers PING like any Redis
    return {"ok": True}


def check_migrations() -> Check:
    global _migrated
    if _migrated:
        return {"ok": True}
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        names = [f"{migration.app_label}.{migration.name}" for migration, _ in plan]
        return {"ok": False, "error": f"{len(names)} unapplied migrations: run manage.py migrate", "unapplied": names[:10]}
    _migrated = True
    return {"ok": True}


def journal_backlog(directory: Path) -> tuple[int, int]:
    """(files, bytes) of the journal files in the directory: every process's rows not yet written and settled."""
    from billing.journal import SUFFIX

    files = size = 0
    try:
        entries = list(directory.glob(f"*{SUFFIX}"))
    except FileNotFoundError:
        return 0, 0
    for path in entries:
        try:
            size += path.stat().st_size
        except FileNotFoundError:  # retired between the listing and the stat
            continue
        files += 1
    return files, size


def check_ledger() -> Check:
    """Rows this process still holds for the database (its spool), and the journal directory's size.

    The spool grows only while the database refuses rows; the journal directory holds every process's recent
    requests until they are written and settled, plus the files of dead processes until they are replayed.
    """
    from django.conf import settings

    from billing import ledger

    spooled = ledger.spooled()
    files, size = journal_backlog(Path(settings.TOLLGATE_JOURNAL_DIR))
    journal_mb = round(size / 1024 / 1024, 1)
    result: Check = {"ok": True, "spooled_rows": spooled, "journal_files": files, "journal_mb": journal_mb}
    errors = []
    if spooled > settings.TOLLGATE_READY_SPOOL_MAX_ROWS:
        errors.append(f"{spooled} ledger rows wait for the database (more than {settings.TOLLGATE_READY_SPOOL_MAX_ROWS})")
    max_mb = settings.TOLLGATE_READY_JOURNAL_MAX_MB
    if max_mb and size > max_mb * 1024 * 1024:
        errors.append(f"the journal holds {journal_mb} MB (more than {max_mb} MB)")
    if errors:
        result |= {"ok": False, "error": "; ".join(errors)}
    return result


def check_beat() -> Check:
    from django.conf import settings

    from gateway_site.celery_status import beat_heartbeat_age

    limit = settings.TOLLGATE_READY_BEAT_MAX_AGE_SECONDS
    age = beat_heartbeat_age()
    if age is None:
        return {"ok": False, "age_seconds": None, "error": "beat has not sent any scheduled task yet"}
    if age > limit:
        return {"ok": False, "age_seconds": round(age, 1), "error": f"beat last sent a task {age:.0f} s ago (limit {limit} s)"}
    return {"ok": True, "age_seconds": round(age, 1)}


def readiness_checks() -> dict[str, Callable[[], Check]]:
    from django.conf import settings

    checks: dict[str, Callable[[], Check]] = {"database": check_database}
    if settings.REDIS_URL:
        checks["redis"] = check_redis
    if settings.TOLLGATE_MONEY_REDIS_URL and settings.TOLLGATE_MONEY_REDIS_URL != settings.REDIS_URL:
        checks["money_redis"] = check_money_redis  # budgets and rate limits cannot be enforced without it
    checks["migrations"] = check_migrations
    checks["ledger"] = check_ledger
    if settings.TOLLGATE_READY_BEAT_MAX_AGE_SECONDS:
        checks["beat"] = check_beat
    return checks


async def readiness() -> tuple[int, bytes]:
    """The readiness answer (status, JSON body), computed at most once per CACHE_SECONDS in this process."""
    global _cache, _last_status
    cached = _cache
    if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
        return cached[1], cached[2]
    checks = await run_checks(readiness_checks())
    ready = all(check["ok"] for check in checks.values())
    status = 200 if ready else 503
    body = json.dumps({"status": "ready" if ready else "not ready", "checks": checks}).encode()
    _cache = (time.monotonic(), status, body)
    if status != _last_status and (_last_status is not None or not ready):
        failing = {name: check.get("error") for name, check in checks.items() if not check["ok"]}
        if ready:
            logger.warning("ready again")
        else:
            logger.warning("not ready: %s", failing)
    _last_status = status
    return status, body


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    method = scope["method"]
    if method not in ("GET", "HEAD"):
        status, content_type, body = 405, b"text/plain; charset=utf-8", b"GET or HEAD only\n"
    elif scope["path"] == READY_PATH:
        content_type = b"application/json"
        status, body = (503, DRAINING_BODY) if drain.draining else await readiness()
    else:
        status, content_type, body = 200, b"text/plain; charset=utf-8", b"ok\n"
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    if status == 405:
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
