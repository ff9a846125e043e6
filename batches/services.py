"""Batches as /v1/batches sees them: create (then queue the validation), read, list and cancel.

Scope: a batch belongs to its tenant. The key that created it is kept (Batch.key: its lines run with that key's
permissions and limits), but any key of the same tenant may read, list and cancel it, as any key of an OpenAI
organisation may. Another tenant's batch is answered 404, as one that does not exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from accounts.keys import Caller
from accounts.models import Tenant
from proxy.errors import GatewayError, NotFound
from proxy.parsing import field, invalid, wrong_type
from proxy.providers.base import JSONDict

from .models import Batch, File

logger = logging.getLogger(__name__)

WINDOW = timedelta(hours=24)
COMPLETION_WINDOWS = ("24h",)
CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata"}
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
PAGE_DEFAULT, PAGE_MOST = 20, 100
ID_CHARS = 40  # longer than any public id we issue: such an id is unknown without asking the database
UNCANCELLABLE = {Batch.Status.FAILED, Batch.Status.FINALIZING, Batch.Status.COMPLETED, Batch.Status.EXPIRED}


class Conflict(GatewayError):
    status, code = 409, "batch_not_cancellable"


@dataclass(frozen=True)
class NewBatch:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None


def parse_new_batch(data: JSONDict) -> NewBatch:
    """Return the checked body of POST /v1/batches. Raises a 400 GatewayError naming the bad parameter."""
    for name in data:
        if name not in CREATE_FIELDS:
            raise GatewayError(f"Unrecognized request argument supplied: {name[:64]}", param=name[:64],
                               code="unknown_parameter")
    input_file_id: str = field(data, "input_file_id", str, "a string", required=True)
    endpoint: str = field(data, "endpoint", str, "a string", required=True)
    if endpoint not in Batch.Endpoint.values:
        raise invalid(f"'endpoint' must be one of {', '.join(Batch.Endpoint.values)}.", "endpoint")
    window: str = field(data, "completion_window", str, "a string", required=True)
    if window not in COMPLETION_WINDOWS:
        raise invalid("'completion_window' must be '24h'.", "completion_window")
    return NewBatch(input_file_id, endpoint, window, check_metadata(field(data, "metadata", dict, "an object")))


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, str] | None:
    """At most 16 string pairs, keys up to 64 characters and values up to 512, as OpenAI allows."""
    if metadata is None:
        return None
    if len(metadata) > METADATA_PAIRS:
        raise invalid(f"'metadata' may hold at most {METADATA_PAIRS} pairs.", "metadata")
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_CHARS:
            raise invalid(f"Keys of 'metadata' must be at most {METADATA_KEY_CHARS} characters.", "metadata")
        if not isinstance(value, str):
            raise wrong_type(f"metadata.{key}", "a string")
        if len(value) > METADATA_VALUE_CHARS:
            raise invalid(f"Values of 'metadata' must be at most {METADATA_VALUE_CHARS} characters.", f"metadata.{key}")
        # PostgreSQL's jsonb cannot hold NUL in a string: the insert would fail.
        if "\x00" in key or "\x00" in value:
            raise invalid("'metadata' must not contain NUL characters.", "metadata")
    return metadata


def tier_queue(tenant: Tenant) -> str:
    """The Celery queue of the tenant's batch tier."""
    return settings.TOLLGATE_QUEUES[tenant.batch_tier]


def plausible_id(public_id: str) -> bool:
    # NUL is refused by PostgreSQL text; a longer id is none of ours. Either is simply unknown.
    return len(public_id) <= ID_CHARS and "\x00" not in public_id


def create_batch(*, caller: Caller, new: NewBatch, now: datetime | None = None) -> Batch:
    """Insert the batch (status validating) on the queue of the tenant's tier. Raises NotFound or a 400 for the file."""
    now = now or timezone.now()
    file = None
    if plausible_id(new.input_file_id):
        file = File.objects.select_related("tenant").filter(tenant_id=caller.tenant_id, public_id=new.input_file_id).first()
    if file is None:
        raise NotFound(f"No such File object: {new.input_file_id[:ID_CHARS]}", param="input_file_id")
    if file.purpose != File.Purpose.BATCH:
        raise invalid("The input file must be uploaded with purpose 'batch'.", "input_file_id")
    if file.expires_at is not None and file.expires_at <= now:
        raise invalid("The input file has expired.", "input_file_id")
    return Batch.objects.create(
        tenant_id=caller.tenant_id, key_id=caller.key_id, endpoint=new.endpoint, input_file=file,
        input_file_public_id=file.public_id, completion_window=new.completion_window, metadata=new.metadata,
        queue=tier_queue(file.tenant), created_at=now, expires_at=now + WINDOW,
    )


def send_validation(batch: Batch) -> None:
    """Send the batch's validation to its queue. Raises whatever the broker raises when it cannot take it.

    Call it after the batch's row is committed: a worker may pick the task up at once. With eager Celery (tests)
    the validation runs here, in the caller's thread. It touches no database itself (the web process calls it off
    the ORM's thread).
    """
    from . import tasks

    tasks.validate_batch.apply_async(args=[batch.pk], queue=batch.queue)


def fail_unqueued(batch: Batch, now: datetime | None = None) -> None:
    """Fail a batch whose validation could not be sent, so it is not left validating with nobody to validate it."""
    error = {"code": "queue_unavailable", "message": "The batch could not be queued. Create it again.",
             "param": None, "line": None}
    Batch.objects.filter(pk=batch.pk, status=Batch.Status.VALIDATING).update(
        status=Batch.Status.FAILED, failed_at=now or timezone.now(), errors=[error])


def get_batch(*, tenant_id: int, batch_id: str) -> Batch:
    """The tenant's batch. Raises NotFound for an unknown id or another tenant's."""
    batch = None
    if plausible_id(batch_id):
        batch = (Batch.objects.select_related("output_file", "error_file")
                 .filter(tenant_id=tenant_id, public_id=batch_id).first())
    if batch is None:
        raise NotFound(f"No such batch: {batch_id[:ID_CHARS]}")
    return batch


def page_params(limit: str | None, after: str | None) -> tuple[int, str | None]:
    """The list's ``limit`` (1 to 100, default 20) and ``after`` cursor. Raises a 400 GatewayError."""
    if limit is None:
        return PAGE_DEFAULT, after
    if not (limit.isascii() and limit.isdigit() and len(limit) <= 4 and 1 <= int(limit) <= PAGE_MOST):
        raise invalid(f"'limit' must be an integer between 1 and {PAGE_MOST}.", "limit")
    return int(limit), after


def list_batches(*, tenant_id: int, limit: int, after: str | None) -> tuple[list[Batch], bool]:
    """The tenant's batches, newest first, after the cursor's batch; and whether more follow. Raises a 400 for an
    unknown cursor."""
    rows = Batch.objects.select_related("output_file", "error_file").filter(tenant_id=tenant_id)
    if after:
        cursor = None
        if plausible_id(after):
            cursor = Batch.objects.filter(tenant_id=tenant_id, public_id=after).values("created_at", "pk").first()
        if cursor is None:
            raise invalid("'after' must be the id of one of your batches.", "after")
        rows = rows.filter(Q(created_at__lt=cursor["created_at"]) | Q(created_at=cursor["created_at"], pk__lt=cursor["pk"]))
    page = list(rows.order_by("-created_at", "-pk")[: limit + 1])
    return page[:limit], len(page) > limit


def cancel_batch(*, tenant_id: int, batch_id: str, now: datetime | None = None) -> Batch:
    """Cancel the tenant's batch and return it. Raises NotFound, or Conflict when it has already finished.

    A batch still validating goes straight to cancelled: none of its lines has run, and the validation moves it
    on only from validating (a conditional UPDATE), so it leaves it cancelled. A batch in progress becomes
    cancelling: its workers stop starting lines, and the runner finalizes it as cancelled once none runs.
    Cancelling a cancelling or cancelled batch returns it unchanged, so a retried cancel succeeds.
    """
    now = now or timezone.now()
    batch = get_batch(tenant_id=tenant_id, batch_id=batch_id)
    # The status may move under us (validation, the runner): each step is conditional on the status it read.
    for _ in range(5):
        if batch.status in UNCANCELLABLE:
            raise Conflict(f"Cannot cancel a batch with status '{batch.status}'.")
        if batch.status in (Batch.Status.CANCELLING, Batch.Status.CANCELLED):
            return batch
        changes: dict[str, Any] = {"status": Batch.Status.CANCELLING, "cancelling_at": now}
        if batch.status == Batch.Status.VALIDATING:
            changes.update(status=Batch.Status.CANCELLED, cancelled_at=now)
        if Batch.objects.filter(pk=batch.pk, status=batch.status).update(**changes):
            break
        batch = get_batch(tenant_id=tenant_id, batch_id=batch_id)
    return get_batch(tenant_id=tenant_id, batch_id=batch_id)
