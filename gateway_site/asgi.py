"""ASGI entry point. /v1 is served here, never over WSGI: streaming needs an event loop."""

from __future__ import annotations

import os
from typing import Any

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

# Build the Django app before importing anything that touches models.
django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from accounts import pepper  # noqa: E402
from billing.consumers import LiveUsageConsumer  # noqa: E402
from gateway_site import drain  # noqa: E402
from gateway_site import health  # noqa: E402
from gateway_site import metrics  # noqa: E402
from proxy.asgi import ApiHandler, render  # noqa: E402
from proxy.errors import Draining  # noqa: E402

# Under another pepper than the keys' every key would be rejected: say so in one line and exit (status 3).
if settings.TOLLGATE_PEPPER_CHECK:
    pepper.check_before_serving()

api_application = ApiHandler()
metrics.start_bind_server()  # TOLLGATE_METRICS_BIND, when set: /metrics without a token, on that address only


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The /v1 API goes to the lean handler; the admin and pages get Django with its middleware."""
    if scope["path"] in health.PATHS:
        await health.app(scope, receive, send)  # before Django's host check: probes call 127.0.0.1
    elif scope["path"] == metrics.PATH:
        await metrics.app(scope, receive, send)  # before Django's host check: Prometheus scrapes by address
    elif drain.draining:  # SIGTERM: this process is going away; a retry reaches another one
        await refuse_while_draining(scope, send)
    else:
        drain.active += 1
        try:
            if scope["path"].startswith("/v1/"):
                await api_application(scope, receive, send)
            else:
                await django_application(scope, receive, send)
        finally:
            drain.active -= 1


async def refuse_while_draining(scope: dict[str, Any], send: Any) -> None:
    if scope["path"].startswith("/v1/"):
        # In the envelope of the API the path belongs to: Anthropic's SDKs read only their own.
        answer = render(scope["path"], Draining("This Tollgate process is shutting down. Retry the request."))
        await drain.refuse(send, body=answer.content, content_type=b"application/json")
    else:
        await drain.refuse(send)


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Start the process's upkeep (journal recovery, leases, spooled rows) at startup; flush it at shutdown."""
    from billing.journal import close_journal
    from proxy import upkeep

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            upkeep.start()
            drain.install()  # SIGTERM drains first (gateway_site/drain.py), then lets the server exit
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await upkeep.stop()
            close_journal()
            await send({"type": "lifespan.shutdown.complete"})
            return


# The live usage page's WebSocket: signed in by the session cookie, from this site's own pages only.
websocket = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([path("ws/live/", LiveUsageConsumer.as_asgi())])))

application = ProtocolTypeRouter({"http": http, "websocket": websocket, "lifespan": lifespan})
