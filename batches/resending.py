"""Sending a batch's tasks again when their messages may have been lost (the upkeep job's part of runner.tend).

A message can be lost: a broker that restarts without persistence, a worker killed holding it, a task that crashed
(a database blip mid-scan: with late acks a failed task is acknowledged all the same). Sending again is safe (a part's
lease and a validation's conditional UPDATE make a duplicate a no-op) but not free: a queue busy for an hour with
other batches would fill with duplicates if every waiting part were sent again every lease. So a task is sent again
only when its message can be gone:

- the broker reports the queue empty: nothing waits in it, so a part still pending was not delivered (or is being
  taken right now: its duplicate is a no-op); a queue holding messages may hold this one, so nothing is sent again;
- the queue's length cannot be read (the broker is away, or a queue this process never sent to): sent again with a
  wait doubling each time, from a lease up to an hour.

A validation is sent again once it has been validating for TOLLGATE_BATCH_VALIDATION_RESEND_SECONDS, then with a
doubling wait too, even on an empty queue: a long file may still be being scanned (a second scan is harmless but
costs a worker).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F, Q
from django.db.models.functions import Coalesce

from .models import Batch, BatchPart

logger = logging.getLogger(__name__)

MOST_SECONDS = 3600  # the longest wait between two sends of one task
ROWS = 1000  # tasks sent again per queue and run at most (the next run takes the rest)


def queue_depths() -> dict[str, int] | None:
    """Messages waiting in each queue, or None when the broker cannot say."""
    from gateway_site import celery_status

    try:
        return celery_status.queue_depths()
    except Exception as e:
        logger.warning("queue lengths unreadable (%s); lost batch tasks are sent again with a growing wait", e)
        return None


def backoff(sent: str, count: str, wait: float, now: datetime) -> Q:
    """Rows whose last send (field ``sent``) is older than ``wait`` * 2 ** ``count``, at most MOST_SECONDS."""
    due = Q()
    n = 0
    while wait * 2**n < MOST_SECONDS:
        due |= Q(**{count: n, f"{sent}__lt": now - timedelta(seconds=wait * 2**n)})
        n += 1
    return due | Q(**{f"{count}__gte": n, f"{sent}__lt": now - timedelta(seconds=MOST_SECONDS)})


def resend_lost(now: datetime, publish: Callable[[int, str], None]) -> None:
    """Send again the parts and validations whose messages may be lost (see the module's docstring); ``publish``
    sends a part's task."""
    lease = settings.TOLLGATE_BATCH_LEASE_SECONDS
    parts = BatchPart.objects.filter(state=BatchPart.State.PENDING, batch__status=Batch.Status.IN_PROGRESS)
    validations = Batch.objects.filter(status=Batch.Status.VALIDATING).annotate(
        last_sent=Coalesce("validation_sent_at", "created_at"))
    waited = settings.TOLLGATE_BATCH_VALIDATION_RESEND_SECONDS
    validations = validations.filter(last_sent__lt=now - timedelta(seconds=waited))
    parts_due = parts.filter(Q(sent_at__isnull=True) | Q(sent_at__lt=now - timedelta(seconds=lease)))
    queues = set(parts_due.values_list("batch__queue", flat=True).distinct()) | set(
        validations.values_list("queue", flat=True).distinct())
    if not queues:
        return
    depths = queue_depths()
    for queue in sorted(queues):
        depth = None if depths is None else depths.get(queue)
        if depth is None:
            due = Q(sent_at__isnull=True) | backoff("sent_at", "resends", lease, now)
        elif depth == 0:
            due = Q()
        else:
            due = Q(sent_at__isnull=True)  # never sent: it cannot be among the messages waiting
        for part_id, sent_at, resends in parts_due.filter(due, batch__queue=queue).values_list(
                "pk", "sent_at", "resends")[:ROWS]:
            # Claimed with a conditional UPDATE on what was read, so two overlapping runs send it once.
            claim = BatchPart.objects.filter(pk=part_id, state=BatchPart.State.PENDING, resends=resends)
            claim = claim.filter(sent_at__isnull=True) if sent_at is None else claim.filter(sent_at=sent_at)
            if claim.update(sent_at=now, resends=F("resends") + 1):
                publish(part_id, queue)
        if depth is None or depth == 0:
            for batch_id, count in validations.filter(backoff("last_sent", "validation_resends", waited, now),
                                                      queue=queue).values_list("pk", "validation_resends")[:ROWS]:
                resend_validation(batch_id, queue, count, now)


def resend_validation(batch_id: int, queue: str, resends: int, now: datetime) -> None:
    from .tasks import validate_batch

    claimed = Batch.objects.filter(pk=batch_id, status=Batch.Status.VALIDATING, validation_resends=resends).update(
        validation_sent_at=now, validation_resends=F("validation_resends") + 1)
    if claimed:
        logger.warning("batch %s has been validating for a while; its validation is sent again", batch_id)
        validate_batch.apply_async(args=[batch_id], queue=queue)
