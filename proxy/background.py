"""Responses API requests with ``background: true``: checked and stored as queued here, run on a Celery worker.

The web process does what a client must hear at once (its key, the body, the model, the conversation it continues)
and answers the Response object with status "queued". A worker of the tenant's batch tier runs it through the /v1
steps (batches/background.py) and stores the answer, which the client polls with GET /v1/responses/{id}. The task is
sent by name: the worker's code stays out of the web process.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase, JsonResponse, RawPostDataException
from django.utils import timezone

from accounts.models import Tenant
from gateway_site.celery import app

from . import outages, responses_store, routing
from .asgi import BODY_TIMED_OUT, BODY_TOO_LARGE
from .attribution import PARAM as TAGS_HEADER, header_tags
from .auth import authenticate
from .db import db_step
from .dialects import get_dialect
from .dialects.responses_items import response_object
from .errors import GatewayError, ServerError, ServiceUnavailable
from .models import StoredResponse
from .parsing import read_json
from .providers.base import LARGE_BODY_BYTES, RESPONSES, ApiRequest, JSONDict

logger = logging.getLogger(__name__)

TASK = "batches.run_background_response"
# Only a body with this at all pays for the search below; only one that matches is parsed here rather than in relay.
_MARK = b'"background"'
_ASKED = re.compile(rb'"background"\s*:\s*true')


def asked(request: HttpRequest) -> bool:
    """Whether the POST body may ask for a background run: a bytes search, no JSON parse (create() confirms)."""
    scope = getattr(request, "scope", None)
    if scope is not None and (scope.get(BODY_TIMED_OUT) or scope.get(BODY_TOO_LARGE)):
        return False  # relay answers these
    declared = request.headers.get("Content-Length", "")
    if declared and not (declared.isascii() and declared.isdigit() and len(declared) <= 18
                         and int(declared) <= settings.TOLLGATE_MAX_BODY_BYTES):
        return False
    try:
        raw = request.body
    except (RequestDataTooBig, RawPostDataException, OSError, ValueError):  # relay answers the right 4xx
        return False
    return _MARK in raw and _ASKED.search(raw) is not None


def without(data: JSONDict, *names: str) -> JSONDict:
    return {name: value for name, value in data.items() if name not in names}


def refuse_unsupported(data: JSONDict) -> None:
    """Raise a 400 for what cannot run in the background (README, "The Responses API")."""
    if data.get("stream") is True:
        raise GatewayError("Background responses cannot stream here: create it without stream, then poll "
                           "GET /v1/responses/{id}.", param="stream", code="invalid_value")
    if data.get("store") is False:
        raise GatewayError("A background response must be stored: remove store: false.", param="store",
                           code="invalid_value")


def input_items_of(data: JSONDict) -> list[JSONDict]:
    """The turn's input as items: a string is one user message."""
    value = data.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def queued_object(response_id: str, body: ApiRequest) -> JSONDict:
    """The Response object of a queued background response: no output yet, the request's parameters echoed as the
    finished answer will echo them."""
    body.state["response_id"] = response_id
    response = response_object(body, status=StoredResponse.Status.QUEUED, output=[])
    response.update(background=True, store=True)
    return response


def save_queued(*, response_id: str, tenant_id: int, key_id: int, model: str, request: JSONDict,
                input_items: list[JSONDict], response: JSONDict, now: datetime | None = None) -> str:
    """Store the queued response; returns the Celery queue of its tenant's batch tier."""
    now = now or timezone.now()
    tier = Tenant.objects.filter(pk=tenant_id).values_list("batch_tier", flat=True).first() or "default"
    StoredResponse.objects.create(
        id=response_id, tenant_id=tenant_id, key_id=key_id, model=model[:200], status=StoredResponse.Status.QUEUED,
        background=True, previous_response_id=str(request.get("previous_response_id") or ""), request=request,
        input_items=input_items, response=response, created_at=now, updated_at=now,
        expires_at=responses_store.expiry(now),
    )
    return settings.TOLLGATE_QUEUES.get(tier, settings.TOLLGATE_QUEUES["default"])


def fail_unqueued(response_id: str, now: datetime | None = None) -> None:
    """Fail a response whose run could not be sent, so it is not left queued with nobody to run it."""
    row = StoredResponse.objects.filter(pk=response_id, status=StoredResponse.Status.QUEUED).first()
    if row is None:
        return
    error = {"code": "server_error", "message": "The response could not be queued. Create it again."}
    StoredResponse.objects.filter(pk=response_id, status=StoredResponse.Status.QUEUED).update(
        status=StoredResponse.Status.FAILED, updated_at=now or timezone.now(),
        response={**row.response, "status": StoredResponse.Status.FAILED, "error": error})


asave_queued, afail_unqueued = db_step(save_queued), db_step(fail_unqueued, retry=True)


def publish(response_id: str, queue: str) -> None:
    """Send the run to the queue. Raises whatever the broker raises when it cannot take it."""
    app.send_task(TASK, args=[response_id], queue=queue)


async def create(request: HttpRequest) -> HttpResponseBase:
    """POST /v1/responses with background: true. Answers the queued Response object, or an error in the envelope."""
    dialect = get_dialect(RESPONSES)
    try:
        caller = await authenticate(request)
        big = len(request.body) > LARGE_BODY_BYTES
        data = await asyncio.to_thread(read_json, request) if big else read_json(request)
        if data.get("background") is not True:  # the bytes matched elsewhere (a nested key): an ordinary request
            from .views import relay

            return await relay(request, RESPONSES, caller)
        refuse_unsupported(data)
        tags = request.headers.get(TAGS_HEADER)
        if tags is not None:
            header_tags(tags)  # refused now, as on any /v1 request; the run reads them from the stored request
        # The provider never sees background: the worker asks it for the answer itself.
        body = dialect.parse(without(data, "background"))
        await dialect.prepare(body, caller)  # a previous_response_id that cannot be continued is refused now
        await routing.route(caller, body.model)  # unknown 404, not allowed 403, as /v1 answers
        response_id = responses_store.new_id()
        response = queued_object(response_id, body)
        items = body.state.get("input_items")
        items = list(items) if isinstance(items, list) else input_items_of(data)

        def clean() -> tuple[JSONDict, list[JSONDict], JSONDict]:
            return responses_store.storable(data), responses_store.storable(items), responses_store.storable(response)

        stored_data, stored_items, stored_response = await asyncio.to_thread(clean) if big else clean()
        if tags is not None:
            stored_data[TAGS_HEADER] = tags  # no parameter of the API has this name: the run takes it out
        queue = await asave_queued(
            response_id=response_id, tenant_id=caller.tenant_id, key_id=caller.key_id, model=body.model,
            request=stored_data, input_items=stored_items, response=stored_response)
        await send(response_id, queue)
    except GatewayError as e:
        return dialect.error_response(e)
    except Exception as e:
        error = outages.unavailable(e)
        if error is None:
            logger.exception("unexpected error creating a background response")
            error = ServerError("Tollgate failed to handle the request. It has been logged.")
        return dialect.error_response(error)
    return JsonResponse(response)


async def send(response_id: str, queue: str) -> None:
    """Publish the run off the event loop and off the ORM's thread (a publish blocks, longer while the broker is
    down). A broker that refuses it fails the response and answers 503."""
    try:
        await sync_to_async(publish, thread_sensitive=False)(response_id, queue)
    except Exception:
        logger.exception("could not queue background response %s", response_id)
        await afail_unqueued(response_id)
        raise ServiceUnavailable("The background queue is unavailable right now; the response was not started. "
                                 "Retry.") from None

