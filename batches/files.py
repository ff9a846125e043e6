"""/v1/files: OpenAI's Files API, for batch input files and the output files batches write.

Files belong to the tenant (any of its keys sees them, as OpenAI's belong to the organisation); another tenant's
file answers exactly as a missing one. Bytes move in worker threads, in chunks, never whole in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from proxy.asgi import BODY_TIMED_OUT, BODY_TOO_LARGE, accepts_uploads
from proxy.auth import authenticate
from proxy.db import db_step
from proxy.errors import GatewayError, MethodNotAllowed, NotFound, RequestTimeout

from . import storage
from .errors import in_envelope
from .models import Batch, File
from .uploads import read_upload, too_large

logger = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
LIST_MOST = 10000
UNFINISHED = (Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS, Batch.Status.FINALIZING, Batch.Status.CANCELLING)


class Conflict(GatewayError):
    status, code = 409, "conflict"


def file_object(row: File) -> dict[str, Any]:
    return {"id": row.public_id, "object": "file", "bytes": row.bytes, "created_at": int(row.created_at.timestamp()),
            "filename": row.filename, "purpose": row.purpose, "status": "processed",
            "expires_at": int(row.expires_at.timestamp()) if row.expires_at else None, "status_details": None}


def no_such_file(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id[:100]}", param="id")


def not_allowed(request: HttpRequest, allowed: str) -> JsonResponse:
    response = MethodNotAllowed(f"Use {' or '.join(allowed.split(', '))} for {request.path[:200]}.").response()
    response["Allow"] = allowed
    return response


# The key is checked before the body is read too: no one without a key makes Tollgate receive an upload.
@accepts_uploads("TOLLGATE_FILE_MAX_BYTES", admit=authenticate)
@csrf_exempt
@in_envelope
async def files(request: HttpRequest) -> HttpResponseBase:
    try:
        caller = await authenticate(request)
        if request.method == "POST":
            return JsonResponse(file_object(await upload(request, caller.tenant_id, caller.key_id)))
        if request.method != "GET":
            return not_allowed(request, "GET, POST")
        rows, has_more = await alist_files(caller.tenant_id, **list_options(request))
    except GatewayError as e:
        return e.response()
    data = [file_object(row) for row in rows]
    return JsonResponse({"object": "list", "data": data, "has_more": has_more,
                         "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


@csrf_exempt
@in_envelope
async def file_detail(request: HttpRequest, file_id: str) -> HttpResponseBase:
    try:
        caller = await authenticate(request)
        if request.method == "DELETE":
            row = await adelete_file(caller.tenant_id, file_id)
            await remove_content(row)
            return JsonResponse({"id": row.public_id, "object": "file", "deleted": True})
        if request.method != "GET":
            return not_allowed(request, "GET, DELETE")
        return JsonResponse(file_object(await aget_file(caller.tenant_id, file_id)))
    except GatewayError as e:
        return e.response()


@csrf_exempt
@in_envelope
async def file_content(request: HttpRequest, file_id: str) -> HttpResponseBase:
    try:
        caller = await authenticate(request)
        if request.method != "GET":
            return not_allowed(request, "GET")
        row = await aget_file(caller.tenant_id, file_id)
    except GatewayError as e:
        return e.response()
    try:
        handle = await asyncio.to_thread(storage.open_content, row)
    except FileNotFoundError:
        logger.error("the content of file %s is missing from storage (%s)", row.public_id, row.storage_name)
        return no_such_file(file_id).response()
    # The SDK's files.content() reads the raw bytes whatever the type says; OpenAI sends octet-stream.
    return StreamingHttpResponse(chunks(handle), content_type="application/octet-stream",
                                 headers={"Content-Length": str(row.bytes)})


async def remove_content(row: File) -> None:
    try:
        await asyncio.to_thread(storage.storage().delete, row.storage_name)
    except Exception:
        # The row is gone, so the file is deleted for the client; stray bytes are only the operator's concern.
        logger.exception("could not remove the content of deleted file %s (%s)", row.public_id, row.storage_name)


async def chunks(handle: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()


async def upload(request: HttpRequest, tenant_id: int, key_id: int) -> File:
    """Store the request's file and return its row. Raises a 400, 408 or 413 GatewayError."""
    scope = getattr(request, "scope", {})
    if scope.get(BODY_TOO_LARGE):
        raise too_large()
    if scope.get(BODY_TIMED_OUT):
        raise RequestTimeout(f"The request body did not arrive within {settings.TOLLGATE_BODY_TIMEOUT_SECONDS} seconds.")
    # Parsing writes the file to disk: a worker thread, not the database thread that /v1's ledger writes share.
    received = await asyncio.to_thread(read_upload, request)
    try:
        row = File(tenant_id=tenant_id, key_id=key_id, purpose=received.purpose, filename=received.filename,
                   bytes=received.size)
        if received.expires_after is not None:
            row.expires_at = row.created_at + received.expires_after
        name = storage.name_for(tenant_id, row.public_id)
        row.storage_name = await asyncio.to_thread(storage.storage().save, name, received.file)
    finally:
        received.file.close()
    try:
        await db_step(row.save)()
    except BaseException:
        await asyncio.to_thread(storage.storage().delete, row.storage_name)
        raise
    return row


def list_options(request: HttpRequest) -> dict[str, Any]:
    """The list's query parameters, checked. Raises a 400 GatewayError."""
    query = request.GET
    limit_text = query.get("limit", str(LIST_MOST))
    if not (limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 6
            and 1 <= int(limit_text) <= LIST_MOST):
        raise GatewayError(f"'limit' must be an integer between 1 and {LIST_MOST}.", param="limit", code="invalid_value")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise GatewayError("'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
    purpose, after = query.get("purpose"), query.get("after")
    for name, value in (("purpose", purpose), ("after", after)):
        if value is not None and not 1 <= len(value) <= 100:
            raise GatewayError(f"'{name}' must be 1 to 100 characters.", param=name, code="invalid_value")
    return {"limit": int(limit_text), "order": order, "purpose": purpose, "after": after}


def live_files(tenant_id: int) -> QuerySet[File]:
    # An expired file reads as deleted (its content is removed by whoever cleans up expired files).
    return File.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()), tenant_id=tenant_id)


def list_files(tenant_id: int, *, limit: int, order: str, purpose: str | None,
               after: str | None) -> tuple[list[File], bool]:
    """Return up to ``limit`` of the tenant's files after the cursor, and whether more follow. Raises a 400."""
    rows = live_files(tenant_id)
    if purpose is not None:
        rows = rows.filter(purpose=purpose)
    newest_first = order == "desc"
    if after is not None:
        cursor = live_files(tenant_id).filter(public_id=after).values("created_at", "pk").first()
        if cursor is None:
            raise GatewayError(f"'after' must be the id of one of your files: no such File object: {after}.",
                               param="after", code="invalid_value")
        # (created_at, pk) orders files made in the same microsecond too.
        if newest_first:
            rows = rows.filter(created_at__lte=cursor["created_at"]).exclude(
                created_at=cursor["created_at"], pk__gte=cursor["pk"])
        else:
            rows = rows.filter(created_at__gte=cursor["created_at"]).exclude(
                created_at=cursor["created_at"], pk__lte=cursor["pk"])
    rows = rows.order_by(*(("-created_at", "-pk") if newest_first else ("created_at", "pk")))
    page = list(rows[:limit + 1])
    return page[:limit], len(page) > limit


def get_file(tenant_id: int, file_id: str) -> File:
    """Return the tenant's file. Raises NotFound (for another tenant's file too)."""
    row = live_files(tenant_id).filter(public_id=file_id).first()
    if row is None:
        raise no_such_file(file_id)
    return row


def delete_file(tenant_id: int, file_id: str) -> File:
    """Delete the tenant's file row and return it (the caller removes its content). Raises NotFound or Conflict."""
    with transaction.atomic():
        # Locked, so a batch created from this file at the same moment waits for the delete and finds no file.
        row = live_files(tenant_id).select_for_update().filter(public_id=file_id).first()
        if row is None:
            raise no_such_file(file_id)
        busy = Batch.objects.filter(tenant_id=tenant_id, input_file=row, status__in=UNFINISHED).first()
        if busy is not None:
            raise Conflict(f"File {row.public_id} is the input of batch {busy.public_id}, which is {busy.status}; "
                           "delete it once the batch has finished, or cancel the batch first.", param="id")
        row.delete()
    return row


alist_files = db_step(list_files)
aget_file = db_step(get_file)
adelete_file = db_step(delete_file)
