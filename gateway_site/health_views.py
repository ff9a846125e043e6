"""GET /health/detailed: the state of everything Tollgate depends on, for operators (a staff session or the ops token).

Provider figures come from the ledger, so they are the same whichever process answers; so are the circuit breakers
(proxy/breaker.py, read from Redis), except without Redis, where the answer says it is this process's view. Nothing
secret is shown: no token, key, pepper or password, and URLs only as scheme, host, port and database.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import django
from django.conf import settings
from django.db.models import Count, Max, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from gateway_site import celery_status, health, ops

WINDOW = timedelta(minutes=5)  # error rates are over this window
LOOKBACK = timedelta(hours=1)  # last success and last failure are looked for this far back (one index range)
TIMEOUT = 3.0  # each part's deadline; the Celery ping alone takes WORKER_PING seconds
WORKER_PING = 1.0
PROVIDER_FAILURES = ("upstream_error", "upstream_cut", "timeout")  # the provider's fault; the client's or ours are not


def _commit(base: Path) -> str:
    """The checkout's commit, read from .git without running git (absent in images: then empty)."""
    try:
        head = (base / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = base / ".git" / ref
            if ref_file.exists():
                return ref_file.read_text().strip()[:12]
            for line in (base / ".git" / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0][:12]
            return ""
        return head[:12]
    except OSError:
        return ""


VERSION = settings.TOLLGATE_VERSION or _commit(Path(settings.BASE_DIR))
STARTED = timezone.now()


async def detailed(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return JsonResponse({"detail": "GET or HEAD only."}, status=405, headers={"Allow": "GET, HEAD"})
    refusal = await _refusal(request)
    if refusal is not None:
        return refusal
    checks = await health.run_checks(_parts(), timeout=TIMEOUT)
    report = {
        "status": "ok" if all(check["ok"] for check in checks.values()) else "degraded",
        "generated_at": timezone.now().isoformat(),
        "version": VERSION,
        "process": {"host": socket.gethostname(), "pid": os.getpid(), "started_at": STARTED.isoformat()},
        **{name: checks[name] for name in ("database", "redis", "migrations", "ledger")},
        "celery": {"workers": checks["celery_workers"], "queues": checks["celery_queues"], "beat": checks["celery_beat"]},
        "providers": checks["providers"],
        "breakers": checks["breakers"],
        "settings": settings_summary(),
    }
    return JsonResponse(report, headers={"Cache-Control": "no-store"})


async def _refusal(request: HttpRequest) -> JsonResponse | None:
    """None for an operator; else 401 (no or a wrong credential) or 403 (signed in, not staff). Never a redirect."""
    authorization = request.headers.get("Authorization")
    if ops.token_matches(authorization):
        return None
    user = await request.auser()
    if authorization or not user.is_authenticated:
        return JsonResponse({"detail": "Sign in as staff or send the ops token (Authorization: Bearer ...)."},
                            status=401, headers={"WWW-Authenticate": 'Bearer realm="tollgate-ops"'})
    if not user.is_staff:
        return JsonResponse({"detail": "Operators (staff) only."}, status=403)
    return None


def _parts() -> dict[str, Callable[[], health.Check]]:
    return {
        "database": health.check_database,
        "redis": health.check_redis if settings.REDIS_URL else lambda: {"ok": True, "configured": False},
        "migrations": health.check_migrations,
        "ledger": health.check_ledger,
        "celery_workers": lambda: {"ok": True, "seen": celery_status.workers_seen(WORKER_PING)},
        "celery_queues": lambda: {"ok": True, "depths": celery_status.queue_depths()},
        "celery_beat": _beat,
        "providers": providers_report,
        "breakers": breakers_report,
    }


def _beat() -> health.Check:
    age = celery_status.beat_heartbeat_age()
    limit = settings.TOLLGATE_READY_BEAT_MAX_AGE_SECONDS
    result: health.Check = {"ok": True, "heartbeat_age_seconds": None if age is None else round(age, 1),
                            "max_age_seconds": limit or None,
                            "source": "newest last_run_at of the enabled periodic tasks (saved by beat at each send)"}
    from gateway_site import beat  # the scheduler's module: only operators' requests need it

    try:
        result["lock"] = beat.status()  # who sends (host, pid), and when it last renewed its lock
    except Exception as e:  # Redis or the database down: shown as such, the rest of the answer stands
        result["lock"] = {"kind": beat.lock_kind(), "error": health.describe(e)}
    if limit and (age is None or age > limit):
        result |= {"ok": False, "error": "beat has not sent a scheduled task within the limit"}
    return result


def providers_report() -> health.Check:
    """Each provider and its deployments: ledger figures and circuit breakers (all processes)."""
    from proxy import breaker
    from proxy.models import Deployment

    now = timezone.now()
    stats = _ledger_stats(now)
    providers: dict[str, dict[str, Any]] = {}
    deployments = list(Deployment.objects.select_related("provider", "route").order_by("provider__name", "route__name", "pk"))
    breakers, source = breaker.statuses(d.pk for d in deployments)
    for deployment in deployments:
        provider = deployment.provider
        entry = providers.setdefault(provider.name, {"name": provider.name, "kind": provider.kind,
                                                      "active": provider.is_active, "deployments": []})
        figures = stats.get((provider.name, deployment.upstream_model), {})
        entry["deployments"].append({
            "id": deployment.pk, "route": deployment.route.name, "upstream_model": deployment.upstream_model,
            "weight": deployment.weight, "active": deployment.is_active and deployment.route.is_active,
            "breaker": _breaker(breakers[deployment.pk]), **_figures(figures),
        })
    return {"ok": True, "window_seconds": int(WINDOW.total_seconds()), "lookback_seconds": int(LOOKBACK.total_seconds()),
            "breaker_scope": _scope(source), "breaker_rule": _rule(),
            "items": list(providers.values())}


def _ledger_stats(now: datetime) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (provider, upstream model): last success and failure within LOOKBACK, counts within WINDOW. One range
    of the created_at index, then one row per failing deployment (by its exact time) for the failure's reason."""
    from billing.models import UsageRecord

    since = now - WINDOW
    failed = Q(end_reason__in=PROVIDER_FAILURES)
    rows = (UsageRecord.objects.filter(created_at__gte=now - LOOKBACK).exclude(provider="")
            .values("provider", "upstream_model")
            .annotate(last_success=Max("created_at", filter=Q(end_reason="complete")),
                      last_failure=Max("created_at", filter=failed),
                      ok_recent=Count("pk", filter=Q(end_reason="complete", created_at__gte=since)),
                      failed_recent=Count("pk", filter=failed & Q(created_at__gte=since))))
    stats = {(row["provider"], row["upstream_model"]): row for row in rows}
    for (provider, model), row in stats.items():
        if row["last_failure"] is not None:
            last = (UsageRecord.objects.filter(created_at=row["last_failure"], provider=provider, upstream_model=model)
                    .filter(failed).values("end_reason", "error_code", "status_code").first())
            row["reason"] = last
    return stats


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    ok, failed = row.get("ok_recent", 0), row.get("failed_recent", 0)
    reason = row.get("reason")
    return {
        "last_success": _iso(row.get("last_success")),
        "last_failure": _iso(row.get("last_failure")),
        "last_failure_reason": (" ".join(str(v) for v in (reason["end_reason"], reason["error_code"],
                                                          reason["status_code"]) if v) if reason else None),
        "requests_5m": ok + failed,
        "failures_5m": failed,
        "error_rate_5m": round(failed / (ok + failed), 4) if ok + failed else None,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def breakers_report() -> health.Check:
    """The deployments whose circuit breaker is open or half-open (none listed: every breaker is closed)."""
    from proxy import breaker
    from proxy.models import Deployment

    deployments = list(Deployment.objects.select_related("provider", "route").order_by("pk"))
    breakers, source = breaker.statuses(d.pk for d in deployments)
    items = [{"deployment": d.pk, "provider": d.provider.name, "route": d.route.name, "upstream_model": d.upstream_model,
              **_breaker(breakers[d.pk])} for d in deployments if breakers[d.pk].state != breaker.CLOSED]
    return {"ok": True, "scope": _scope(source), "rule": _rule(), "items": items}


def _scope(source: str) -> str:
    if source == "redis":
        return "all processes (shared in Redis)"
    return f"this process only (pid {os.getpid()}): no shared Redis, or it cannot be read"


def _rule() -> str:
    return (f"{settings.TOLLGATE_BREAKER_FAILURES} failures within {settings.TOLLGATE_BREAKER_WINDOW_SECONDS} s open it "
            f"for {settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS} s; then one probe request closes it or opens it again")


def _breaker(status: Any) -> dict[str, Any]:
    reopens = status.reopens_at
    left = max(0.0, reopens - time.time()) if reopens is not None else 0.0
    return {"state": status.state, "open": status.state != "closed", "failures": status.failures,
            "reopens_at": datetime.fromtimestamp(reopens, tz=dt_timezone.utc).isoformat() if reopens else None,
            "cooldown_left_seconds": round(left, 1)}


def _where(url: str) -> str:
    """scheme://host:port/path of a URL, never its user name or password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def settings_summary() -> dict[str, Any]:
    """What an operator needs to know about this process's configuration; no secret, and no secret's length."""
    database = settings.DATABASES["default"]
    return {
        "debug": settings.DEBUG,
        "python": platform.python_version(),
        "django": django.get_version(),
        "database": {"engine": database["ENGINE"].rsplit(".", 1)[-1], "host": database.get("HOST") or None,
                     "port": database.get("PORT") or None, "name": str(database["NAME"]),
                     "pool_max": (database.get("OPTIONS", {}).get("pool") or {}).get("max_size")},
        "redis": _where(settings.REDIS_URL) if settings.REDIS_URL else None,
        "celery_broker": _where(settings.CELERY_BROKER_URL),
        "allowed_hosts": settings.ALLOWED_HOSTS,
        "journal_dir": str(settings.TOLLGATE_JOURNAL_DIR),
        "ops_token_set": bool(settings.TOLLGATE_OPS_TOKEN),
        "secure_ssl_redirect": settings.SECURE_SSL_REDIRECT,
        "ready": {"spool_max_rows": settings.TOLLGATE_READY_SPOOL_MAX_ROWS,
                  "journal_max_mb": settings.TOLLGATE_READY_JOURNAL_MAX_MB,
                  "beat_max_age_seconds": settings.TOLLGATE_READY_BEAT_MAX_AGE_SECONDS},
        "limits": {"max_body_bytes": settings.TOLLGATE_MAX_BODY_BYTES, "unpriced": settings.TOLLGATE_UNPRICED,
                   "routes_cache_seconds": settings.TOLLGATE_ROUTES_CACHE_SECONDS,
                   "key_cache_seconds": settings.TOLLGATE_KEY_CACHE_SECONDS,
                   "reservation_lease_seconds": settings.TOLLGATE_RESERVATION_LEASE_SECONDS,
                   "upstream_connect_timeout": settings.TOLLGATE_UPSTREAM_CONNECT_TIMEOUT,
                   "upstream_read_timeout": settings.TOLLGATE_UPSTREAM_READ_TIMEOUT,
                   "ledger_retention_days": settings.TOLLGATE_LEDGER_RETENTION_DAYS},
    }
