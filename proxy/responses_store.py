"""Stored Responses API answers: a conversation's history for previous_response_id, and the write after each answer.

Everything here is tenant-scoped: a response id another tenant holds is "not found", exactly like a missing one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import connection
from django.utils import timezone

from accounts.keys import Caller
from billing.batching import GroupCommit

from .db import db_step
from .errors import GatewayError, NotFound
from .models import StoredResponse
from .providers.base import ApiRequest, JSONDict

logger = logging.getLogger(__name__)

PARAM = "previous_response_id"
# Statuses a conversation can go on from. A queued or running background response has no output yet.
UNFINISHED = (StoredResponse.Status.QUEUED, StoredResponse.Status.IN_PROGRESS)


# An escaped U+0000 in JSON text (after an even number of backslashes: not the six characters "\u0000" themselves).
_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def storable(value: Any) -> Any:
    """The value with U+0000 replaced by U+FFFD in its strings: PostgreSQL's jsonb refuses U+0000, and a response
    the client was told is stored must be readable and continuable. Returns the value itself when it has none."""
    try:
        # orjson escapes U+0000 the same way, about ten times faster: most values have none and stop here.
        if b"\\u0000" not in orjson.dumps(value):
            return value
    except TypeError:  # what orjson refuses (integers past 64 bits) the standard library checks
        pass
    text = json.dumps(value)
    if "\\u0000" not in text:
        return value
    return json.loads(_NUL.sub(lambda m: m.group(1) + "\\ufffd", text))


def new_id() -> str:
    """A fresh Response id, as OpenAI shapes them: resp_ and 48 hex characters."""
    return "resp_" + secrets.token_hex(24)


def expiry(now: datetime | None = None) -> datetime:
    """When a response stored now is deleted."""
    return (now or timezone.now()) + timedelta(days=settings.TOLLGATE_RESPONSES_RETENTION_DAYS)


def not_found(response_id: str) -> NotFound:
    return NotFound(f"Previous response with id '{response_id}' not found.", param=PARAM,
                    code="previous_response_not_found")


def load_history(tenant_id: int, previous_response_id: str, now: datetime | None = None) -> list[JSONDict]:
    """Every earlier turn's input items then output items, oldest first. Raises NotFound or a 400 GatewayError."""
    now = now or timezone.now()
    limit = settings.TOLLGATE_RESPONSES_MAX_TURNS
    turns: list[JSONDict] = []
    seen: set[str] = set()
    current = previous_response_id
    while current:
        if len(turns) >= limit:
            raise GatewayError(f"This conversation is longer than {limit} turns, the most Tollgate continues. "
                               "Start a new conversation, with the context you need in its input.", param=PARAM)
        if current in seen:  # a loop can only come from edited rows; refuse it rather than walk forever
            raise not_found(current)
        seen.add(current)
        row = (StoredResponse.objects.filter(pk=current, tenant_id=tenant_id, expires_at__gt=now)
               .values("status", "previous_response_id", "input_items", "response").first())
        if row is None:
            raise not_found(current)
        if row["status"] in UNFINISHED:
            raise GatewayError(f"Response '{current}' is still {row['status']}: a conversation can go on from it "
                               "once it has completed. Poll GET /v1/responses/{id} until it has.", param=PARAM)
        if row["status"] != StoredResponse.Status.COMPLETED:
            raise not_found(current)
        turns.append(row)
        current = row["previous_response_id"]
    items: list[JSONDict] = []
    for row in reversed(turns):
        items.extend(item for item in row["input_items"] or [] if isinstance(item, dict))
        output = row["response"].get("output") if isinstance(row["response"], dict) else None
        items.extend(item for item in output or [] if isinstance(item, dict))
    return items


aload_history = db_step(load_history, retry=True)


async def history(caller: Caller, previous_response_id: str) -> list[JSONDict]:
    """The items of every earlier turn of the conversation, oldest first. Raises a 404 or 400 GatewayError."""
    # NUL is refused by PostgreSQL text; a longer id is none of ours. Either is simply unknown.
    if not isinstance(previous_response_id, str) or not previous_response_id or len(previous_response_id) > 64 \
            or "\x00" in previous_response_id:
        raise not_found(str(previous_response_id)[:64].replace("\x00", ""))
    return await aload_history(caller.tenant_id, previous_response_id)


COLUMNS = ("id", "tenant_id", "key_id", "model", "status", "background", "previous_response_id", "request",
           "input_items", "response", "created_at", "updated_at", "expires_at")
JSON_COLUMNS = frozenset({"request", "input_items", "response"})  # given as JSON text (json_text)
TIMES = frozenset({"created_at", "updated_at", "expires_at"})


def json_text(value: Any) -> str:
    """The value as JSON text a jsonb column takes: encoded once, by orjson, unless it holds a U+0000 (storable)."""
    try:
        text = orjson.dumps(value)
    except TypeError:  # what orjson refuses (integers past 64 bits)
        return json.dumps(storable(value))
    return json.dumps(storable(value)) if b"\\u0000" in text else text.decode()


def insert_new(rows: list[JSONDict]) -> list[bool]:
    """Insert answers in one statement. Their ids are new (proxy/dialects/responses.py makes one per request; a
    background run stores its own answer in batches/background.py), so there is nothing to update and no cancel to
    respect. Plain SQL with the JSON already encoded: the ORM would encode each document again, on every request."""
    ops = connection.ops
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    one = "(" + ", ".join(f"%s{cast}" if name in JSON_COLUMNS else "%s" for name in COLUMNS) + ")"
    params: list[Any] = []
    for row in rows:
        params.extend(ops.adapt_datetimefield_value(row[name]) if name in TIMES else row[name] for name in COLUMNS)
    table = ops.quote_name(StoredResponse._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES {', '.join([one] * len(rows))} "
                       "ON CONFLICT DO NOTHING", params)
    return [True] * len(rows)


ainsert_new = db_step(insert_new, retry=True)


class NewResponses(GroupCommit[JSONDict]):
    """Group commit for stored answers: those that arrive while an INSERT runs go together in the next one, and
    each request still waits until its own answer is stored (so the client can continue from it at once)."""

    limit = 100

    async def flush(self, rows: list[JSONDict]) -> list[Any]:
        return await ainsert_new(rows)


_writers: dict[asyncio.AbstractEventLoop, NewResponses] = {}


def new_responses() -> NewResponses:
    loop = asyncio.get_running_loop()
    if loop not in _writers:
        for stale in [other for other in _writers if other.is_closed()]:
            del _writers[stale]
        _writers[loop] = NewResponses()
    return _writers[loop]


async def save(body: ApiRequest, response: JSONDict) -> None:
    """Store the answer when the request asked to (store, the default). Never raises: the client keeps its answer."""
    state = body.state
    if not state.get("store"):
        return
    try:
        previous = body.data.get(PARAM)

        def clean() -> tuple[str, str, str]:
            return json_text(body.data), json_text(list(state.get("input_items") or [])), json_text(response)

        # A large body is encoded in a worker thread, not on the event loop.
        request, items, stored = await asyncio.to_thread(clean) if body.is_large else clean()
        now = timezone.now()
        await new_responses().submit(dict(
            id=str(response["id"]), tenant_id=state["tenant_id"], key_id=state.get("key_id"), model=body.model[:200],
            status=str(response.get("status") or StoredResponse.Status.COMPLETED), background=False,
            previous_response_id=previous if isinstance(previous, str) else "", request=request, input_items=items,
            response=stored, created_at=now, updated_at=now, expires_at=expiry(now)))
    except Exception:
        logger.exception("could not store response %s", response.get("id"))
