"""The management API's rate limit: TOLLGATE_API_RATE per user (per address before sign-in), with the real wait."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django_ratelimit.core import get_usage
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle


class ApiRateLimit(BaseThrottle):
    """django-ratelimit's fixed window in the "limits" cache; Retry-After is the time left in the caller's window."""

    time_left: int | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        usage = get_usage(request._request, group="api", key="user_or_ip", rate=settings.TOLLGATE_API_RATE,
                          increment=True)
        if usage is None:  # RATELIMIT_ENABLE is off
            return True
        self.time_left = usage["time_left"]
        return not usage["should_limit"]

    def wait(self) -> float | None:
        # -1: the counter could not be read (refused, fail closed) and no window tells when to come back.
        if self.time_left is None or self.time_left < 0:
            return None
        # django-ratelimit counts the second its window ends in that window, so a fresh count starts one later.
        return float(self.time_left + 1)
