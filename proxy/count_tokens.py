"""POST /v1/messages/count_tokens (to be built)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from .errors import NotFound


@csrf_exempt
async def count_tokens(request: HttpRequest) -> HttpResponseBase:
    return NotFound("Not available yet.").response()
