"""/v1/files (being built: answers 404 until the Files API lands)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from proxy.errors import NotFound


@csrf_exempt
async def files(request: HttpRequest) -> HttpResponseBase:
    return NotFound("Unknown endpoint.", code="unknown_url").response()


file_detail = file_content = files
