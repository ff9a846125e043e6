"""Checking a new batch's input file, on a worker, before any of its lines runs.

The file is read line by line from storage, never whole: memory holds one line (at most TOLLGATE_MAX_BODY_BYTES,
as a /v1 body), the set of custom_ids seen and at most MAX_ERRORS errors. Every line must be a request for the
batch's endpoint, all for one model the batch's key may use, with a body that /v1 would accept (proxy/parsing).

Line indexes: line i (0-based) is the i-th piece of the file split on b"\\n". Every line below ``total`` is a
request; blank lines after the last request are ignored, blank lines before it are errors. BatchPart's
first_line/last_line count the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.keys import Caller, load_record
from proxy import routing
from proxy.errors import GatewayError
from proxy.models import ModelRoute
from proxy.parsing import finite_float, parse_data, reject_constant, unencodable
from proxy.providers.base import CHAT, COMPLETIONS, EMBEDDINGS, JSONDict

from . import storage
from .models import Batch, BatchPart

MAX_ERRORS = 100  # as OpenAI, a file full of mistakes is reported by its first ones
CUSTOM_ID_CHARS = 200
MODEL_CHARS = 200  # Batch.model's length; no route has a longer name
ENDPOINTS = {Batch.Endpoint.CHAT: CHAT, Batch.Endpoint.COMPLETIONS: COMPLETIONS, Batch.Endpoint.EMBEDDINGS: EMBEDDINGS}


class Invalid(Exception):
    """One error of the batch, as OpenAI reports it (openai.types.BatchError)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param

    def as_error(self, line: int | None) -> JSONDict:
        return {"code": self.code, "message": self.message, "param": self.param, "line": line}


@dataclass
class Scan:
    """What reading the file found: the requests' count and model, or the errors."""

    total: int = 0
    model: str = ""
    route: str = ""  # the canonical name of the model's route
    errors: list[JSONDict] = field(default_factory=list)


def validate_batch(batch_id: int, *, now: datetime | None = None) -> None:
    """Check the batch's input file: start it (parts, in_progress, sent to its queue) or fail it with its errors.

    A batch no longer validating (cancelled meanwhile, or a redelivered task finding it done) is left alone.
    """
    batch = Batch.objects.select_related("input_file", "key").filter(pk=batch_id).first()
    if batch is None or batch.status != Batch.Status.VALIDATING:
        return
    try:
        caller = caller_of(batch, now or timezone.now())
        if batch.input_file is None:
            raise Invalid("file_not_found", "The batch's input file has been deleted.", "input_file_id")
        try:
            content = storage.open_content(batch.input_file)
        except OSError:
            raise Invalid("file_not_found", "The batch's input file content is missing.", "input_file_id") from None
        with content:
            scan = scan_file(content, batch.endpoint, caller)
    except Invalid as e:
        scan = Scan(errors=[e.as_error(None)])
    if scan.errors:
        fail(batch, scan.errors, now or timezone.now())
    elif start(batch, scan, now or timezone.now()):
        from . import runner

        runner.send_parts(batch)


def caller_of(batch: Batch, now: datetime) -> Caller:
    """The batch's key as /v1 would see it. Raises Invalid when the key or its tenant may no longer be used."""
    record = load_record(batch.key.prefix)
    if record is None or record.revoked_at is not None:
        raise Invalid("invalid_api_key", "The API key that created this batch has been revoked.")
    if record.expires_at is not None and record.expires_at <= now:
        raise Invalid("invalid_api_key", "The API key that created this batch has expired.")
    if not record.tenant_active:
        raise Invalid("tenant_inactive", "This batch's tenant is deactivated. Ask your Tollgate operator.")
    return record.caller


def numbered_lines(content: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(1-based number, line) for each line of the file; None for a line longer than a /v1 body, which is skipped."""
    limit = settings.TOLLGATE_MAX_BODY_BYTES
    number = 0
    while raw := content.readline(limit + 1):
        number += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of the long line, a piece at a time
                raw = content.readline(limit + 1)
            yield number, None
        else:
            yield number, raw


def scan_file(content: IO[bytes], endpoint: str, caller: Caller) -> Scan:
    """Read every line and return what they hold, or their first MAX_ERRORS errors."""
    seen: set[str] = set()  # the one thing that grows with the file: 50,000 ids of up to 200 characters at most
    blank: list[int] = []
    scan = Scan()
    table: routing.Table | None = None
    for number, raw in numbered_lines(content):
        if raw is not None and not raw.strip():
            if len(blank) < MAX_ERRORS:
                blank.append(number)  # an error only if a request follows it
            continue
        scan.errors.extend(Invalid("invalid_json_line", "The line is empty.").as_error(n) for n in blank)
        blank.clear()
        scan.total += 1
        if scan.total > settings.TOLLGATE_BATCH_MAX_LINES:
            scan.errors.append(Invalid("too_many_requests", f"A batch may hold at most {settings.TOLLGATE_BATCH_MAX_LINES} "
                                       "requests.").as_error(number))
            break
        try:
            custom_id, model = check_line(raw, endpoint, first=number == 1)
            if custom_id in seen:
                raise Invalid("duplicate_custom_id", f"The custom_id '{custom_id}' appears on more than one line. "
                              "Every line needs its own.", "custom_id")
            seen.add(custom_id)
            if not scan.model:
                scan.model = model  # set first: a model refused is reported once, not on every line
                table = table or routing.load_table()
                scan.route = check_model(caller, table, model)
            elif model != scan.model:
                raise Invalid("mismatched_model", f"Every line of a batch must use the same model: this one uses "
                              f"'{model[:MODEL_CHARS]}', an earlier one '{scan.model[:MODEL_CHARS]}'.", "body.model")
        except Invalid as e:
            scan.errors.append(e.as_error(number))
        if len(scan.errors) >= MAX_ERRORS:
            break
    if scan.total == 0 and not scan.errors:
        scan.errors.append(Invalid("empty_file", "The input file holds no requests.").as_error(None))
    del scan.errors[MAX_ERRORS:]
    return scan


def decode(raw: bytes | None, *, first: bool) -> JSONDict:
    """The line's JSON object. Raises Invalid."""
    if raw is None:
        raise Invalid("invalid_value", f"The line is larger than {settings.TOLLGATE_MAX_BODY_BYTES} bytes.")
    try:
        text = raw.decode("utf-8")
        if first and text.startswith("\ufeff"):
            text = text[1:]
        data = json.loads(text, parse_constant=reject_constant, parse_float=finite_float)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting raises RecursionError
        raise Invalid("invalid_json_line", "The line is not valid JSON.") from None
    if not isinstance(data, dict):
        raise Invalid("invalid_json_line", "The line must be a JSON object.")
    # As /v1: a \ud800-style escape can leave a lone surrogate, which no UTF-8 text can hold.
    if b"\\ud" in raw or b"\\uD" in raw:
        where = unencodable(data)
        if where is not None:
            raise Invalid("invalid_value", "The line contains a lone UTF-16 surrogate, which is not valid Unicode text.",
                          where or None)
    return data


def check_line(raw: bytes | None, url: str, *, first: bool) -> tuple[str, str]:
    """Return the line's custom_id and model. Raises Invalid."""
    data = decode(raw, first=first)
    custom_id = required(data, "custom_id")
    if not isinstance(custom_id, str):
        raise Invalid("invalid_value", "'custom_id' must be a string.", "custom_id")
    if len(custom_id) > CUSTOM_ID_CHARS:
        raise Invalid("invalid_value", f"'custom_id' must be at most {CUSTOM_ID_CHARS} characters.", "custom_id")
    if "\x00" in custom_id:
        raise Invalid("invalid_value", "'custom_id' must not contain NUL characters.", "custom_id")
    if required(data, "method") != "POST":
        raise Invalid("invalid_method", "The method must be POST.", "method")
    if required(data, "url") != url:
        raise Invalid("invalid_url", f"The url must be {url}, the batch's endpoint.", "url")
    body = required(data, "body")
    if not isinstance(body, dict):
        raise Invalid("invalid_value", "'body' must be an object.", "body")
    if body.get("model") is None:
        raise Invalid("missing_required_parameter", "Missing required parameter: 'body.model'.", "body.model")
    try:
        request = parse_data(body, ENDPOINTS[url])
    except GatewayError as e:
        raise Invalid("invalid_value", e.message, f"body.{e.param}" if e.param else "body") from None
    if request.stream:
        raise Invalid("invalid_value", "Batch requests cannot stream: leave out 'stream' or set it to false.", "body.stream")
    return custom_id, request.model


def required(data: JSONDict, name: str) -> Any:
    value = data.get(name)
    if value is None:
        raise Invalid("missing_required_parameter", f"Missing required parameter: '{name}'.", name)
    return value


def check_model(caller: Caller, table: routing.Table, model: str) -> str:
    """The canonical name of the model's route, as /v1 would route it for the caller. Raises Invalid."""
    choices = table.routes.get(model) if len(model) <= MODEL_CHARS else None
    if not choices:
        raise Invalid("model_not_found", f"The model '{model[:MODEL_CHARS]}' does not exist or you do not have access "
                      "to it.", "body.model")
    refused_by = caller.refused_by(model, *table.names_of(model))
    if refused_by == "tenant":
        raise Invalid("model_not_found", f"Your tenant is not allowed to use the model '{model}'. Ask your Tollgate "
                      "operator.", "body.model")
    if refused_by == "key":
        raise Invalid("model_not_found", f"This API key is not allowed to use the model '{model}'.", "body.model")
    return choices[0].target.public_model


def fail(batch: Batch, errors: list[JSONDict], now: datetime) -> None:
    # Conditional on validating: a batch cancelled meanwhile stays cancelled.
    Batch.objects.filter(pk=batch.pk, status=Batch.Status.VALIDATING).update(
        status=Batch.Status.FAILED, failed_at=now, errors=errors)


def start(batch: Batch, scan: Scan, now: datetime) -> bool:
    """Split the valid batch into parts and mark it in progress; False when it is no longer validating."""
    route_queue = ModelRoute.objects.filter(name=scan.route).values_list("batch_queue", flat=True).first()
    queue = route_queue or batch.queue
    size = settings.TOLLGATE_BATCH_PART_LINES
    count = math.ceil(scan.total / size)
    with transaction.atomic():
        # Claim the batch with a conditional UPDATE: zero rows means it was cancelled, or another run of this task
        # (a redelivery) started it first. Only the claimer creates the parts.
        claimed = Batch.objects.filter(pk=batch.pk, status=Batch.Status.VALIDATING).update(
            status=Batch.Status.IN_PROGRESS, in_progress_at=now, total=scan.total, model=scan.model, queue=queue,
            parts=count)
        if not claimed:
            return False
        BatchPart.objects.bulk_create(
            BatchPart(batch_id=batch.pk, tenant_id=batch.tenant_id, number=n, first_line=n * size,
                      last_line=min((n + 1) * size, scan.total))
            for n in range(count))
    batch.refresh_from_db()
    return True
