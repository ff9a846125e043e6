"""/v1/batches: OpenAI's Batches API. The web process only records and reads batches; workers validate and run them.

Any key of the batch's tenant may read, list and cancel it (OpenAI's organisation scope); see batches/services.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.keys import Caller
from proxy.auth import authenticate
from proxy.db import db_step
from proxy.errors import GatewayError, NotAllowed, ServiceUnavailable
from proxy.parsing import read_json

from . import services
from .errors import in_envelope
from .models import Batch
from .objects import batch_list, batch_object

logger = logging.getLogger(__name__)


def create(caller: Caller, new: services.NewBatch) -> Batch:
    return services.create_batch(caller=caller, new=new)


def read(caller: Caller, batch_id: str) -> dict[str, Any]:
    return batch_object(services.get_batch(tenant_id=caller.tenant_id, batch_id=batch_id))


def page(caller: Caller, limit: int, after: str | None) -> dict[str, Any]:
    rows, has_more = services.list_batches(tenant_id=caller.tenant_id, limit=limit, after=after)
    return batch_list(rows, has_more=has_more)


def cancel(caller: Caller, batch_id: str) -> dict[str, Any]:
    return batch_object(services.cancel_batch(tenant_id=caller.tenant_id, batch_id=batch_id))


acreate, aread, apage, acancel = db_step(create), db_step(read), db_step(page), db_step(cancel)
afail_unqueued = db_step(services.fail_unqueued)


async def send_validation(batch: Batch) -> None:
    # A publish blocks (a broker round trip, longer while the broker is down), so it must not hold the thread that
    # runs every /v1 ORM step. Eager Celery (tests) runs the validation right here, with the ORM: that needs the
    # ORM's thread and connection, where the test's transaction is.
    eager = bool(getattr(settings, "CELERY_TASK_ALWAYS_EAGER", False))
    try:
        await sync_to_async(services.send_validation, thread_sensitive=eager)(batch)
    except Exception:
        logger.exception("could not queue the validation of batch %s", batch.public_id)
        await afail_unqueued(batch)
        raise ServiceUnavailable("The batch queue is unavailable right now; the batch was not started. Retry.") from None


def parse_new_batch(request: HttpRequest) -> services.NewBatch:
    return services.parse_new_batch(read_json(request))


async def answer(request: HttpRequest, handle: Callable[[Caller], Awaitable[dict[str, Any]]]) -> HttpResponseBase:
    """Authenticate, then answer handle(caller) as JSON; every failure in OpenAI's error envelope."""
    try:
        return JsonResponse(await handle(await authenticate(request)))
    except GatewayError as e:
        return e.response()


@csrf_exempt
@in_envelope
async def batches(request: HttpRequest) -> HttpResponseBase:
    async def handle(caller: Caller) -> dict[str, Any]:
        if request.method == "POST":
            # In a thread: the body may be megabytes of JSON (up to TOLLGATE_MAX_BODY_BYTES), not for the event loop.
            new = await asyncio.to_thread(parse_new_batch, request)
            batch = await acreate(caller, new)
            await send_validation(batch)
            return batch_object(batch)
        if request.method == "GET":
            limit, after = services.page_params(request.GET.get("limit"), request.GET.get("after"))
            return await apage(caller, limit, after)
        raise NotAllowed("GET", "POST")

    return await answer(request, handle)


@csrf_exempt
@in_envelope
async def batch_detail(request: HttpRequest, batch_id: str) -> HttpResponseBase:
    async def handle(caller: Caller) -> dict[str, Any]:
        if request.method != "GET":
            raise NotAllowed("GET")
        return await aread(caller, batch_id)

    return await answer(request, handle)


@csrf_exempt
@in_envelope
async def batch_cancel(request: HttpRequest, batch_id: str) -> HttpResponseBase:
    async def handle(caller: Caller) -> dict[str, Any]:
        if request.method != "POST":
            raise NotAllowed("POST")
        return await acancel(caller, batch_id)

    return await answer(request, handle)
