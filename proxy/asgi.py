"""The ASGI handler that serves /v1: Django's, minus what the API path does not use.

Django's middleware are sync-first: under ASGI each one costs two thread hops per request, and the
per-request ThreadSensitiveContext starts a new thread for every request. /v1 needs neither sessions,
CSRF, messages nor clickjacking headers, and authenticates by API key, so this handler runs the URL
resolver and the async view with no middleware, and lets the few thread-sensitive calls left (the ORM
steps, request signals) share one long-lived thread instead of a new one per request.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response

STARTED = "tollgate.started"  # scope key: when the request reached Tollgate, for x-tollgate-overhead-ms


class ApiHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope[STARTED] = time.perf_counter()
        await self.handle(scope, receive, send)
