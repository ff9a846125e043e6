"""The database side of running a part: its lease, claiming lines, saving their results. Each function is one short
transaction (or one statement), run on the worker's database thread."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from .models import Batch, BatchLine, BatchPart

STOPPING = (Batch.Status.CANCELLING, Batch.Status.CANCELLED)


def lease_end(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.TOLLGATE_BATCH_LEASE_SECONDS)


def take_part(part_id: int, worker: str, now: datetime | None = None) -> BatchPart | None:
    """Take the part's lease: a pending part, or a running one whose lease ran out. None: someone else has it."""
    now = now or timezone.now()
    # A conditional UPDATE: of two workers given the same part, exactly one changes the row.
    free = Q(state=BatchPart.State.PENDING) | Q(state=BatchPart.State.RUNNING, lease_expires_at__lt=now)
    taken = BatchPart.objects.filter(free, pk=part_id).update(state=BatchPart.State.RUNNING, worker=worker,
                                                              lease_expires_at=lease_end(now))
    return BatchPart.objects.select_related("batch__input_file").get(pk=part_id) if taken else None


def renew(part_id: int, worker: str, now: datetime | None = None) -> bool:
    """Move the part's lease one lease further. False: the lease is no longer ours (it ran out and was given away)."""
    now = now or timezone.now()
    return bool(BatchPart.objects.filter(pk=part_id, worker=worker, state=BatchPart.State.RUNNING)
                .update(lease_expires_at=lease_end(now)))


def finish_part(part_id: int, worker: str) -> bool:
    """Mark the part done, if it is still ours."""
    return bool(BatchPart.objects.filter(pk=part_id, worker=worker, state=BatchPart.State.RUNNING)
                .update(state=BatchPart.State.DONE, lease_expires_at=None))


def claimed(batch_id: int, first: int, last: int) -> set[int]:
    """Indexes of the part's lines that were claimed already (by this part's earlier worker)."""
    return set(BatchLine.objects.filter(batch_id=batch_id, index__gte=first, index__lt=last)
               .values_list("index", flat=True))


def claim(batch_id: int, tenant_id: int, index: int, custom_id: str) -> int | None:
    """Claim a line before it runs: its row is inserted, unique by batch and custom_id (and index). Returns the row's
    id, or None when it was claimed already: then it must not run, so no line ever runs twice."""
    try:
        with transaction.atomic():
            return BatchLine.objects.create(batch_id=batch_id, tenant_id=tenant_id, index=index,
                                            custom_id=custom_id).pk
    except IntegrityError:
        return None


def save_result(line_id: int, batch_id: int, *, succeeded: bool, status_code: int | None, request_id: str,
                result: str, now: datetime | None = None) -> bool:
    """Record how a line ended and count it on the batch, in one transaction. False: the line was no longer running
    (the upkeep job had given it up as its worker's lease ran out), so it is not counted twice."""
    state = BatchLine.State.SUCCEEDED if succeeded else BatchLine.State.FAILED
    with transaction.atomic():
        changed = BatchLine.objects.filter(pk=line_id, state=BatchLine.State.RUNNING).update(
            state=state, status_code=status_code, request_id=request_id[:32], result=result,
            finished_at=now or timezone.now())
        if changed:
            counter = "completed" if succeeded else "failed"
            Batch.objects.filter(pk=batch_id).update(**{counter: F(counter) + 1})
    return bool(changed)


def batch_state(batch_id: int) -> tuple[str, datetime | None]:
    """The batch's status and expiry, read about once a second while a part runs."""
    status, expires_at = Batch.objects.filter(pk=batch_id).values_list("status", "expires_at").get()
    return status, expires_at


def stop_reason(status: str, expires_at: datetime | None, now: datetime) -> str | None:
    """Why no new line may start: "batch_cancelled", "batch_expired", or None."""
    if status in STOPPING:
        return "batch_cancelled"
    if status == Batch.Status.EXPIRED or (expires_at is not None and expires_at <= now):
        return "batch_expired"
    if status != Batch.Status.IN_PROGRESS:
        return "batch_cancelled"  # failed or finished meanwhile: nothing more runs
    return None
