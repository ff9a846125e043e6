"""Liveness: GET /healthz answers 200 "ok" while the process serves HTTP.

It is answered in asgi.py before Django sees the request, so it needs no allowed host (a container's probe calls
127.0.0.1 whatever DJANGO_ALLOWED_HOSTS says), no HTTPS redirect, no database and no Redis. It says the process is
alive, not that it can serve a request: readiness (database, Redis) would be another endpoint.
"""

from __future__ import annotations

from typing import Any

PATH = "/healthz"
PATHS = frozenset({PATH})  # every path asgi.py hands to this module, before Django


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    allowed = scope["method"] in ("GET", "HEAD")
    body = b"ok\n" if allowed else b"GET or HEAD only\n"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    if not allowed:
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": 200 if allowed else 405, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
