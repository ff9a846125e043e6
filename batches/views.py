"""/v1/batches (being built: answers 404 until the Batches API lands)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from proxy.errors import NotFound


@csrf_exempt
async def batches(request: HttpRequest) -> HttpResponseBase:
    return NotFound("Unknown endpoint.", code="unknown_url").response()


batch_detail = batch_cancel = batches
