"""System checks for running several processes: what must then be shared, and Redis that must not lose money.

Both run with every management command that checks (``migrate`` at startup under Docker Compose, ``check``) and
with ``check --deploy``.

How many processes will run is not something Django can see, so the hint is WEB_CONCURRENCY (uvicorn's and
gunicorn's default number of workers) or the setting TOLLGATE_PROCESSES (how many serving processes the whole
deployment runs, across hosts: set it when they are separate containers or machines).
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Info, Warning, register


def processes() -> int:
    """The largest number of serving processes announced (1 when nothing says more)."""
    try:
        workers = int(os.environ.get("WEB_CONCURRENCY", "").strip() or 1)
    except ValueError:
        workers = 1  # not ours to refuse: uvicorn reports a bad WEB_CONCURRENCY itself
    return max(workers, settings.TOLLGATE_PROCESSES)


@register()
def shared_state(app_configs: Any = None, **_: Any) -> list[CheckMessage]:
    """Warn when several processes would each keep state that must be shared."""
    count = processes()
    if count < 2:
        return []
    why = f"{count} processes are announced (WEB_CONCURRENCY / TOLLGATE_PROCESSES)"
    found: list[CheckMessage] = []
    if not settings.TOLLGATE_MONEY_REDIS_URL:
        found.append(Warning(
            f"{why}, but there is no Redis for the money state: each process counts rate limits and requests in "
            "flight on its own, so a key gets its limit once per process.",
            hint="Set REDIS_URL (or TOLLGATE_MONEY_REDIS_URL).", id="tollgate.W001"))
    if settings.CHANNEL_LAYERS["default"]["BACKEND"].endswith("InMemoryChannelLayer"):
        found.append(Warning(
            f"{why}, but the channel layer is in memory: a live usage page sees only the rows of the process "
            "that serves it.", hint="Set REDIS_URL (or TOLLGATE_CHANNELS_REDIS_URL).", id="tollgate.W002"))
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        found.append(Warning(
            f"{why}, but Celery's broker is a folder on this machine: workers and beat in another container or on "
            "another host never see its tasks.", hint="Set REDIS_URL (or TOLLGATE_BROKER_URL, redis:// or amqp://).",
            id="tollgate.W003"))
    return found


def eviction_policies(url: str) -> set[str]:
    """The maxmemory-policy of the money Redis (of each primary, for a cluster). Raises if it cannot be read."""
    from billing import scripts

    client = scripts.sync_client(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        if scripts.is_cluster(url):
            answer = client.config_get("maxmemory-policy", target_nodes=client.PRIMARIES)
            replies = answer.values() if all(isinstance(v, dict) for v in answer.values()) else [answer]
        else:
            replies = [client.config_get("maxmemory-policy")]
        return {str(reply.get("maxmemory-policy", "")) for reply in replies}
    finally:
        client.close()


@register()
def money_eviction(app_configs: Any = None, **_: Any) -> list[CheckMessage]:
    """Warn when the money Redis may evict keys: an evicted budget total or hold loses track of money."""
    url = settings.TOLLGATE_MONEY_REDIS_URL
    if not url:
        return []
    try:
        policies = eviction_policies(url)
    except Exception as e:
        from redis.exceptions import ConnectionError, ResponseError, TimeoutError

        if isinstance(e, ResponseError):
            return [Info(f"The money Redis does not allow CONFIG GET ({str(e)[:120]}), so its eviction policy is "
                         "unknown: make sure it is noeviction.", id="tollgate.I004")]
        if isinstance(e, (ConnectionError, TimeoutError)):
            return [Info("The money Redis could not be reached to read its eviction policy.", id="tollgate.I005")]
        raise
    evicting = sorted(p for p in policies if p != "noeviction")
    if not evicting:
        return []
    return [Warning(
        f"The money Redis may evict keys (maxmemory-policy {', '.join(evicting)}): an evicted budget total, hold or "
        "rate limit window loses track of money in flight and of limits.",
        hint="Run it with --maxmemory-policy noeviction (put the response cache on its own Redis with "
             "TOLLGATE_CACHE_REDIS_URL if it should be evicted).", id="tollgate.W004")]
