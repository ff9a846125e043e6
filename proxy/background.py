"""Responses API requests with ``background: true``: stored as queued and run on a Celery worker (to be built)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase


def asked(request: HttpRequest) -> bool:
    return False


async def create(request: HttpRequest) -> HttpResponseBase:
    raise NotImplementedError
