"""Ties the audit entries a request writes to that request: its source (admin, api, page) and client address.

/v1 changes nothing audited, so its requests pass straight through: one string test, no context, no allocation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from . import context

HOT_PATH = "/v1/"


class AuditMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self.__acall__(request)
        if request.path.startswith(HOT_PATH):
            return self.get_response(request)  # type: ignore[return-value]
        with context.origin(context.Origin(context.source_of(request.path), request)):
            return self.get_response(request)  # type: ignore[return-value]

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path.startswith(HOT_PATH):
            return await self.get_response(request)  # type: ignore[no-any-return,misc]
        # The sync view runs in a thread that gets a copy of this context, so it sees the origin set here.
        with context.origin(context.Origin(context.source_of(request.path), request)):
            return await self.get_response(request)  # type: ignore[no-any-return,misc]
