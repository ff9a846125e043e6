"""ASGI entry point. /v1 is served here, never over WSGI: streaming needs an event loop."""

from __future__ import annotations

import os
from typing import Any

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

# Build the Django app before importing anything that touches models.
django_application = get_asgi_application()

from proxy.asgi import ApiHandler  # noqa: E402

api_application = ApiHandler()


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The /v1 API goes to the lean handler; the admin and pages get Django with its middleware."""
    if scope["path"].startswith("/v1/"):
        await api_application(scope, receive, send)
    else:
        await django_application(scope, receive, send)


application = ProtocolTypeRouter({"http": http})
