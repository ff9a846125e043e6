"""The reference point for the streaming figures: stock Django relaying a stream, and nothing else.

One async view on Django's own ASGI handler (no middleware, no apps) that forwards the request body to
the upstream with aiohttp and relays the answer as it arrives: no key check, no routing, no ledger.
``bench/run.py --reference`` streams through it, to show what a plain async Django view costs before
any gateway work is done. Run alone: BARE_UPSTREAM=http://127.0.0.1:9100/v1/chat/completions \
uvicorn bench.bare_django:application
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp
import django
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from django.urls import path

UPSTREAM = os.environ["BARE_UPSTREAM"]
settings.configure(DEBUG=False, ROOT_URLCONF=__name__, MIDDLEWARE=[], INSTALLED_APPS=[], ALLOWED_HOSTS=["*"],
                   SECRET_KEY="bare-django-reference-only")  # noqa: S106 (serves no secrets)
django.setup()

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


def session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    if loop not in _sessions:
        _sessions[loop] = aiohttp.ClientSession()
    return _sessions[loop]


async def chat(request: HttpRequest) -> HttpResponseBase:
    upstream = await session().post(UPSTREAM, data=request.body, headers={"content-type": "application/json"})

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for piece in upstream.content.iter_any():
                yield piece
        finally:
            upstream.release()

    return StreamingHttpResponse(relay(), content_type="text/event-stream")


urlpatterns = [path("v1/chat/completions", chat)]

from django.core.asgi import get_asgi_application  # noqa: E402 (needs the settings above)

application = get_asgi_application()
