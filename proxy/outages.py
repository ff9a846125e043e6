"""Redis or the database being down is Tollgate's outage, not the provider's and not a bug.

Requests that need the missing dependency are refused with 503 `service_unavailable` (fail closed: nothing
unmetered goes through), recorded as `gateway_unavailable`, and logged once per outage rather than once per request.
"""

from __future__ import annotations

import logging
import time

from django.db import InterfaceError, OperationalError

from .errors import GatewayError, ServerError, ServiceUnavailable

logger = logging.getLogger(__name__)

QUIET_SECONDS = 30.0  # one log line per dependency per this long, however many requests fail meanwhile
_last_logged: dict[str, float] = {}


def dependency_of(error: BaseException) -> str | None:
    """'redis' or 'database' when the error means that dependency cannot be reached; None otherwise."""
    if isinstance(error, (OperationalError, InterfaceError)):
        return "database"
    try:
        import redis.exceptions
    except ImportError:  # pragma: no cover - redis is a runtime requirement
        return None
    if isinstance(error, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return "redis"
    return None


def note(dependency: str, error: BaseException) -> None:
    """Log the outage, at most once per QUIET_SECONDS and dependency, without a traceback."""
    now = time.monotonic()
    if now - _last_logged.get(dependency, -QUIET_SECONDS) >= QUIET_SECONDS:
        _last_logged[dependency] = now
        logger.error("%s unavailable (%s: %s); requests that need it get 503 until it is back",
                     dependency, type(error).__name__, str(error)[:200])


def unavailable(error: BaseException) -> ServiceUnavailable | None:
    """The 503 for an outage error (logged), or None when the error is something else."""
    dependency = dependency_of(error)
    if dependency is None:
        return None
    note(dependency, error)
    what = "budget and rate limit store" if dependency == "redis" else "database"
    return ServiceUnavailable(f"Tollgate's {what} is unavailable right now; the request was not sent. Retry shortly.")


def failure(error: Exception, where: str) -> GatewayError:
    """The answer to an error a view did not expect (call it in the except block): an outage's 503, which the SDKs
    retry, or else a 500, logged with its traceback."""
    answer = unavailable(error)
    if answer is None:
        logger.exception("unexpected error on %s", where)
        answer = ServerError("Tollgate failed to handle the request. It has been logged.")
    return answer
