"""The database side of running a part: its lease, claiming lines, saving their results. Each function is one short
transaction (or one statement), run on the worker's database thread."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from .lines import unrun_line
from .models import Batch, BatchLine, BatchPart

logger = logging.getLogger(__name__)

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


def give_back(part_id: int, worker: str) -> bool:
    """Hand the part back, pending, for another worker to take now (this one shuts down). False: not ours anymore."""
    return bool(BatchPart.objects.filter(pk=part_id, worker=worker, state=BatchPart.State.RUNNING)
                .update(state=BatchPart.State.PENDING, worker="", lease_expires_at=None))


def unclaim(line_id: int) -> bool:
    """Drop the claim of a line that never ran (its worker shuts down), so the part's next worker runs it."""
    return bool(BatchLine.objects.filter(pk=line_id, state=BatchLine.State.RUNNING).delete()[0])


def claimed(batch_id: int, first: int, last: int) -> set[int]:
    """Indexes of the part's lines that were claimed already (by this part's earlier worker)."""
    return set(BatchLine.objects.filter(batch_id=batch_id, index__gte=first, index__lt=last)
               .values_list("index", flat=True))


def claim(batch_id: int, tenant_id: int, index: int, custom_id: str) -> int | None:
    """Claim one line (see claim_lines). Returns its row's id, or None when it was claimed already."""
    return claim_lines(batch_id, tenant_id, [(index, custom_id)]).get(index)


def claim_lines(batch_id: int, tenant_id: int, lines: list[tuple[int, str]],
                retake_for: tuple[int, str] | None = None) -> dict[int, int]:
    """Claim lines before they run: their rows are inserted, unique by batch and custom_id (and by index), in one
    statement. Returns {index: row id} of the lines this call claimed; a line missing was claimed already and must not
    run, so no line ever runs twice. (INSERT ... ON CONFLICT DO NOTHING RETURNING: PostgreSQL, SQLite 3.35+.)

    ``retake_for`` (part id, worker) repeats a claim whose answer was lost (the connection broke after the commit):
    lines of the group still running are then this worker's own, as long as it still holds the part's lease, since
    handing a part to another worker fails every line it left running (release_part)."""
    if not lines:
        return {}
    if retake_for is not None:
        return reclaim_lines(batch_id, tenant_id, lines, *retake_for)
    now = timezone.now()
    fields = [f for f in BatchLine._meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    values: list[object] = []
    for index, custom_id in lines:
        row = BatchLine(batch_id=batch_id, tenant_id=tenant_id, index=index, custom_id=custom_id, created_at=now)
        values += [f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields]
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = (f"INSERT INTO {quote(BatchLine._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
           f"VALUES {', '.join([one] * len(lines))} ON CONFLICT DO NOTHING RETURNING {quote('id')}, {quote('index')}")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, values)
        return {index: line_id for line_id, index in cursor.fetchall()}


def reclaim_lines(batch_id: int, tenant_id: int, lines: list[tuple[int, str]], part_id: int,
                  worker: str) -> dict[int, int]:
    now = timezone.now()
    with transaction.atomic():
        held = BatchPart.objects.select_for_update().filter(
            pk=part_id, worker=worker, state=BatchPart.State.RUNNING, lease_expires_at__gt=now).exists()
        if not held:
            return {}  # the part went to another worker meanwhile: none of these lines is ours to run
        claimed = claim_lines(batch_id, tenant_id, lines)
        indexes = [index for index, _ in lines if index not in claimed]
        ours = BatchLine.objects.filter(batch_id=batch_id, index__in=indexes, state=BatchLine.State.RUNNING)
        claimed.update(dict(ours.values_list("index", "id")))
        return claimed


@dataclass(frozen=True)
class Result:
    """How a line ended, as its row keeps it."""

    line_id: int
    succeeded: bool
    status_code: int | None
    request_id: str
    result: str


def save_result(line_id: int, batch_id: int, *, succeeded: bool, status_code: int | None, request_id: str,
                result: str, now: datetime | None = None) -> bool:
    """Record how one line ended (see save_results)."""
    return save_results(batch_id, [Result(line_id, succeeded, status_code, request_id, result)], now)[0]


def save_results(batch_id: int, results: list[Result], now: datetime | None = None) -> list[bool]:
    """Record how lines ended and count them on the batch, in one transaction. False for a line no longer running
    (the upkeep job gave it up as its worker's lease ran out): it is not counted twice."""
    quote = connection.ops.quote_name
    table = quote(BatchLine._meta.db_table)
    # One UPDATE ... FROM (VALUES ...) for every line, only where still running (PostgreSQL, SQLite 3.33+): Django's
    # bulk_update builds a CASE per column and row, and compiling it cost more than the lines' own work.
    one = "(%s, %s, %s, %s, %s)"
    sql = (f"UPDATE {table} SET {quote('state')} = v.column2, {quote('status_code')} = CAST(v.column3 AS integer), "
           f"{quote('request_id')} = v.column4, {quote('result')} = v.column5, {quote('finished_at')} = %s "
           f"FROM (VALUES {', '.join([one] * len(results))}) AS v WHERE {table}.{quote('id')} = v.column1 "
           f"AND {table}.{quote('state')} = %s RETURNING {table}.{quote('id')}")
    finished = BatchLine._meta.get_field("finished_at").get_db_prep_save(now or timezone.now(), connection)
    values: list[object] = [finished]
    for r in results:
        state = BatchLine.State.SUCCEEDED if r.succeeded else BatchLine.State.FAILED
        values += [r.line_id, str(state), r.status_code, r.request_id[:32], r.result]
    values.append(str(BatchLine.State.RUNNING))
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql, values)
            changed = {line_id for (line_id,) in cursor.fetchall()}
        if changed:
            succeeded = sum(1 for r in results if r.line_id in changed and r.succeeded)
            Batch.objects.filter(pk=batch_id).update(completed=F("completed") + succeeded,
                                                     failed=F("failed") + len(changed) - succeeded)
    return [r.line_id in changed for r in results]


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


def release_part(part: BatchPart, now: datetime) -> bool:
    """Take back a dead worker's part: its lines still running are failed (batch_worker_lost; their ledger rows come
    from the dead process's journal) and the part is pending again. False: someone else did it first."""
    with transaction.atomic():
        taken = BatchPart.objects.filter(pk=part.pk, state=BatchPart.State.RUNNING, lease_expires_at__lt=now).update(
            state=BatchPart.State.PENDING, worker="", lease_expires_at=None)
        if not taken:
            return False
        lost = BatchLine.objects.filter(batch_id=part.batch_id, state=BatchLine.State.RUNNING,
                                        index__gte=part.first_line, index__lt=part.last_line)
        count = 0
        for line in lost:
            count += BatchLine.objects.filter(pk=line.pk, state=BatchLine.State.RUNNING).update(
                state=BatchLine.State.FAILED, result=unrun_line(line.custom_id, "batch_worker_lost"), finished_at=now)
        if count:
            Batch.objects.filter(pk=part.batch_id).update(failed=F("failed") + count)
    logger.warning("batch %s part %s: worker %s lost its lease; %d lines given up, the rest goes to another worker",
                   part.batch.public_id, part.number, part.worker, count)
    return True
