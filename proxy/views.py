from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from .auth import authenticate
from .errors import GatewayError, NotFound


@csrf_exempt
async def unknown_endpoint(request: HttpRequest, path: str) -> HttpResponseBase:
    # Authenticate first, as OpenAI does: an anonymous caller learns nothing about which paths exist.
    try:
        await authenticate(request)
        raise NotFound(f"Unknown endpoint: {request.method} /v1/{path}", code="unknown_url")
    except GatewayError as e:
        return e.response()
