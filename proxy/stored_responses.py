"""GET and DELETE /v1/responses/{id}, POST /v1/responses/{id}/cancel, GET /v1/responses/{id}/input_items.

Only the tenant's own responses exist for it: another tenant's id, an unknown one and an expired one are all the
same 404. Every ORM step runs on the /v1 database thread (proxy/db.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from accounts.keys import Caller

from . import outages
from .auth import authenticate
from .db import db_step
from .errors import GatewayError, NotAllowed, NotFound
from .models import StoredResponse
from .providers.base import JSONDict

PAGE_DEFAULT, PAGE_MOST = 20, 100
ID_CHARS = 64  # StoredResponse.id's length: a longer id is none of ours
# Ids given to stored input items that came without one, by item type (stable: made from the response id).
ITEM_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def missing(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id[:ID_CHARS]}' not found.")


def find(tenant_id: int, response_id: str, now: datetime | None = None) -> Any:
    """The tenant's unexpired StoredResponse rows with this id (a queryset of at most one). Raises NotFound early for an
    id that cannot be one of ours."""
    if len(response_id) > ID_CHARS or "\x00" in response_id:
        raise missing(response_id)
    return StoredResponse.objects.filter(pk=response_id, tenant_id=tenant_id, expires_at__gt=now or timezone.now())


def response_object(row: StoredResponse) -> JSONDict:
    """The Response object as stored, its status the row's (the two are written together; the row's is the truth)."""
    response = dict(row.response or {})
    response["status"] = row.status
    return response


def read(tenant_id: int, response_id: str) -> JSONDict:
    row = find(tenant_id, response_id).only("status", "response").first()
    if row is None:
        raise missing(response_id)
    return response_object(row)


def delete(tenant_id: int, response_id: str) -> JSONDict:
    deleted, _ = find(tenant_id, response_id).delete()
    if not deleted:
        raise missing(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


def cancel_response(tenant_id: int, response_id: str, now: datetime | None = None) -> JSONDict:
    """Cancel a queued or running background response and return it. Raises NotFound, or a 400 for a response that
    was not created in the background or has already finished. Cancelling a cancelled response returns it again.

    Under the row's lock: the worker's claim and its final write are conditional on the status, so a response
    cancelled here is neither started afterwards nor overwritten by its answer."""
    now = now or timezone.now()
    with transaction.atomic():
        row = find(tenant_id, response_id, now).select_for_update().first()
        if row is None:
            raise missing(response_id)
        if not row.background:
            raise GatewayError("Only responses created with background set to true can be cancelled.")
        if row.status == StoredResponse.Status.CANCELLED:
            return response_object(row)
        if row.status not in (StoredResponse.Status.QUEUED, StoredResponse.Status.IN_PROGRESS):
            raise GatewayError(f"Cannot cancel a response with status '{row.status}'.")
        row.status = StoredResponse.Status.CANCELLED
        row.response = {**(row.response or {}), "status": row.status}
        row.updated_at = now
        row.save(update_fields=["status", "response", "updated_at"])
    return response_object(row)


def page_params(query: Any) -> tuple[int, str, str | None]:
    """``limit`` (1 to 100, default 20), ``order`` (asc or desc, default desc) and ``after``. Raises a 400."""
    limit = query.get("limit")
    if limit is not None and not (limit.isascii() and limit.isdigit() and len(limit) <= 4
                                  and 1 <= int(limit) <= PAGE_MOST):
        raise GatewayError(f"'limit' must be an integer between 1 and {PAGE_MOST}.", param="limit",
                           code="invalid_value")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise GatewayError("'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
    return int(limit) if limit is not None else PAGE_DEFAULT, order, query.get("after")


def with_ids(response_id: str, items: list[Any]) -> list[JSONDict]:
    """The stored items, each with an id: its own, or one made from the response id and its place (stable)."""
    suffix = response_id.removeprefix("resp_")
    listed = []
    for number, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        item = dict(item)
        kind = item.setdefault("type", "message") if "role" in item else item.get("type")
        if not isinstance(item.get("id"), str):
            item["id"] = f"{ITEM_PREFIX.get(str(kind), 'item')}_{suffix}{number:04d}"
        if kind in ITEM_PREFIX and kind != "reasoning":
            item.setdefault("status", "completed")  # as OpenAI lists them: the input was complete when sent
        if kind == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            text_part: JSONDict = {"type": part, "text": item["content"]}
            if part == "output_text":
                text_part["annotations"] = []
            item["content"] = [text_part]
        listed.append(item)
    return listed


def list_items(tenant_id: int, response_id: str, limit: int, order: str, after: str | None) -> JSONDict:
    row = find(tenant_id, response_id).only("input_items").first()
    if row is None:
        raise missing(response_id)
    items = with_ids(response_id, row.input_items or [])
    if order == "desc":
        items.reverse()
    if after is not None:
        place = next((i for i, item in enumerate(items) if item["id"] == after), None)
        if place is None:
            raise GatewayError("'after' must be the id of one of this response's input items.", param="after",
                               code="invalid_value")
        items = items[place + 1:]
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


aread, adelete, acancel, alist_items = db_step(read), db_step(delete), db_step(cancel_response), db_step(list_items)


async def answer(request: HttpRequest, handle: Callable[[Caller], Awaitable[JSONDict]]) -> HttpResponseBase:
    """Authenticate, then answer handle(caller) as JSON; every failure in OpenAI's error envelope: an outage of the
    database a 503 the SDKs retry, anything unexpected a logged 500."""
    try:
        return JsonResponse(await handle(await authenticate(request)))
    except GatewayError as e:
        return e.response()
    except Exception as e:
        return outages.failure(e, f"{request.method} {request.path}").response()


@csrf_exempt
async def detail(request: HttpRequest, response_id: str) -> HttpResponseBase:
    async def handle(caller: Caller) -> JSONDict:
        if request.method == "GET":
            if request.GET.get("stream", "false").lower() != "false":
                # OpenAI can replay a background response's events; Tollgate keeps only the finished object.
                raise GatewayError("Stored responses are not streamed here: retrieve the response without stream and "
                                   "poll it until its status is final.", param="stream", code="invalid_value")
            return await aread(caller.tenant_id, response_id)
        if request.method == "DELETE":
            return await adelete(caller.tenant_id, response_id)
        raise NotAllowed("GET", "DELETE")

    return await answer(request, handle)


@csrf_exempt
async def cancel(request: HttpRequest, response_id: str) -> HttpResponseBase:
    async def handle(caller: Caller) -> JSONDict:
        if request.method != "POST":
            raise NotAllowed("POST")
        return await acancel(caller.tenant_id, response_id)

    return await answer(request, handle)


@csrf_exempt
async def input_items(request: HttpRequest, response_id: str) -> HttpResponseBase:
    async def handle(caller: Caller) -> JSONDict:
        if request.method != "GET":
            raise NotAllowed("GET")
        limit, order, after = page_params(request.GET)
        return await alist_items(caller.tenant_id, response_id, limit, order, after)

    return await answer(request, handle)
