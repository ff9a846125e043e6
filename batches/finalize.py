"""Finishing a batch: its output and error files, its final counts, status and time.

A batch is finalized once every part is done, or once it is cancelling or past its window and no part runs.
Claiming is a conditional UPDATE to ``finalizing``, so of two workers (or a worker and the upkeep job) exactly one
writes the files; a finalizer that dies half-way is replaced after a lease (see runner.tend), and the final UPDATE
names the claim's time, so a late one never overwrites the files of the one that replaced it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from . import expiry, storage
from .lines import unrun_line
from .reading import requests
from .models import Batch, BatchLine, BatchPart, File

logger = logging.getLogger(__name__)

FINISHING = (Batch.Status.IN_PROGRESS, Batch.Status.CANCELLING)
TIME_OF = {Batch.Status.COMPLETED: "completed_at", Batch.Status.CANCELLED: "cancelled_at",
           Batch.Status.EXPIRED: "expired_at"}


def part_running(batch_id: int, now: datetime) -> bool:
    """Whether a part of the batch runs under a live lease (its in-flight lines are still to be recorded)."""
    return BatchPart.objects.filter(batch_id=batch_id, state=BatchPart.State.RUNNING, lease_expires_at__gte=now).exists()


def is_ready(batch: Batch, now: datetime) -> bool:
    """Whether the batch can be finalized now."""
    if batch.status == Batch.Status.FINALIZING:
        return batch.finalizing_at is not None and batch.finalizing_at < now - lease()
    if batch.status not in FINISHING:
        return False
    stopping = batch.status == Batch.Status.CANCELLING or (batch.expires_at is not None and batch.expires_at <= now)
    if stopping:
        # Lines of a dead worker's part are given up by tend() first, once its lease ran out.
        return not BatchPart.objects.filter(batch_id=batch.pk, state=BatchPart.State.RUNNING).exists()
    return not BatchPart.objects.filter(batch_id=batch.pk).exclude(state=BatchPart.State.DONE).exists()


def lease() -> timedelta:
    return timedelta(seconds=settings.TOLLGATE_BATCH_LEASE_SECONDS)


def maybe_finalize(batch_id: int, now: datetime | None = None) -> bool:
    """Finalize the batch if it is ready and nobody else is doing it. Returns whether this call finalized it."""
    now = now or timezone.now()
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None or not is_ready(batch, now):
        return False
    claimed = Batch.objects.filter(pk=batch_id, status=batch.status, finalizing_at=batch.finalizing_at).update(
        status=Batch.Status.FINALIZING, finalizing_at=now)
    if not claimed:
        return False  # another worker claimed it first
    batch.refresh_from_db()
    finish(batch, now)
    return True


def final_status(batch: Batch, unrun: int, now: datetime) -> tuple[str, str]:
    """The batch's final status, and the error code of the lines that never ran."""
    if batch.cancelling_at is not None:
        return Batch.Status.CANCELLED, "batch_cancelled"
    if unrun and batch.expires_at is not None and batch.expires_at <= now:
        return Batch.Status.EXPIRED, "batch_expired"
    return Batch.Status.COMPLETED, "batch_worker_lost"  # unrun lines here would be a part's worker stopping early


def finish(batch: Batch, claimed_at: datetime) -> None:
    """Write the files and the final status of a batch this process claimed at ``claimed_at``."""
    lines = BatchLine.objects.filter(batch_id=batch.pk)
    for line in lines.filter(state=BatchLine.State.RUNNING):  # a dead worker's, not given up yet: rare
        BatchLine.objects.filter(pk=line.pk, state=BatchLine.State.RUNNING).update(
            state=BatchLine.State.FAILED, result=unrun_line(line.custom_id, "batch_worker_lost"), finished_at=claimed_at)
    succeeded = lines.filter(state=BatchLine.State.SUCCEEDED).count()
    ran = lines.count()
    unrun = max(batch.total - ran, 0)
    status, reason = final_status(batch, unrun, claimed_at)
    output = error = None
    if succeeded:
        output = storage.write_lines(tenant_id=batch.tenant_id, purpose=File.Purpose.BATCH_OUTPUT,
                                     filename=f"{batch.public_id}_output.jsonl",
                                     lines=results(batch, BatchLine.State.SUCCEEDED))
    if succeeded < batch.total:
        error = storage.write_lines(tenant_id=batch.tenant_id, purpose=File.Purpose.BATCH_OUTPUT,
                                    filename=f"{batch.public_id}_error.jsonl", lines=errors(batch, reason))
    now = timezone.now()
    done = Batch.objects.filter(pk=batch.pk, status=Batch.Status.FINALIZING, finalizing_at=claimed_at).update(
        status=status, output_file=output, error_file=error, completed=succeeded, failed=batch.total - succeeded,
        **{TIME_OF[status]: now})
    if not done:  # replaced meanwhile (this process was too slow): its files are not the batch's
        for row in (output, error):
            if row is not None:
                storage.delete(row)
    elif (expires_at := expiry.output_expiry(now)) is not None:
        File.objects.filter(pk__in=[row.pk for row in (output, error) if row is not None]).update(expires_at=expires_at)


def results(batch: Batch, state: str) -> Iterator[bytes]:
    """The saved lines in the given state, in input order, read in slices (never all in memory)."""
    rows = BatchLine.objects.filter(batch_id=batch.pk, state=state).order_by("index").values_list("result", flat=True)
    for result in rows.iterator(chunk_size=1000):
        yield result.encode()


def errors(batch: Batch, reason: str) -> Iterator[bytes]:
    """The error file, in input order: failed lines as saved, lines still marked running as lost with their worker,
    and lines never claimed (read from the input file for their custom_id) as cancelled or expired."""
    rows = (BatchLine.objects.filter(batch_id=batch.pk).exclude(state=BatchLine.State.SUCCEEDED).order_by("index")
            .values_list("index", "state", "custom_id", "result"))
    claimed = set(BatchLine.objects.filter(batch_id=batch.pk).values_list("index", flat=True))
    failed = rows.iterator(chunk_size=1000)
    pending = next(failed, None)
    for index, custom_id in unclaimed_lines(batch, claimed):
        while pending is not None and pending[0] < index:
            yield saved(pending)
            pending = next(failed, None)
        yield unrun_line(custom_id, reason).encode()
    while pending is not None:
        yield saved(pending)
        pending = next(failed, None)


def saved(row: tuple[int, str, str, str]) -> bytes:
    _, state, custom_id, result = row
    if state == BatchLine.State.RUNNING or not result:
        return unrun_line(custom_id, "batch_worker_lost").encode()
    return result.encode()


def unclaimed_lines(batch: Batch, claimed: set[int]) -> Iterator[tuple[int, str]]:
    """(index, custom_id) of each input line nobody claimed."""
    if len(claimed) >= batch.total or batch.input_file is None:
        return
    for index, raw in requests(batch.input_file, 0):
        if index >= batch.total:
            return
        if index not in claimed:
            yield index, custom_id_of(raw)


def custom_id_of(raw: bytes) -> str:
    try:
        value = json.loads(raw).get("custom_id")
    except (ValueError, AttributeError):
        value = None
    return value if isinstance(value, str) else ""


def unfinished(now: datetime) -> list[int]:
    """Batches that may be ready to finalize: running ones (checked one by one) and stuck finalizations."""
    stuck = Q(status=Batch.Status.FINALIZING, finalizing_at__lt=now - lease())
    return list(Batch.objects.filter(Q(status__in=FINISHING) | stuck).values_list("pk", flat=True)[:1000])
