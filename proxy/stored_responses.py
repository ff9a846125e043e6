"""GET/DELETE /v1/responses/{id}, POST .../cancel, GET .../input_items (to be built)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from .errors import NotFound


@csrf_exempt
async def detail(request: HttpRequest, response_id: str) -> HttpResponseBase:
    return NotFound("Not available yet.").response()


cancel = input_items = detail
