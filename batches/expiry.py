"""Deleting expired files: an upload's expires_after, or batch output files when TOLLGATE_BATCH_OUTPUT_EXPIRY_DAYS
is set. An expired file reads as deleted at once (batches/files.py); this hourly job removes its content and row."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import storage
from .files import UNFINISHED
from .models import Batch, File

logger = logging.getLogger(__name__)

CHUNK = 100  # files deleted per transaction
MOST = 10_000  # files deleted per run at most: the next run (an hour later) takes the rest
# A file is deleted this long after it expired: a batch created from it just before (create_batch refuses an expired
# file) is committed by then, so it is seen as the file's user and the file is kept.
GRACE = timedelta(minutes=1)


def delete_expired_files(*, now: datetime | None = None, chunk: int = CHUNK, most: int = MOST) -> int:
    """Delete the content and rows of files expired before now (less GRACE), in chunks, never the input file of an
    unfinished batch (it is deleted once the batch ends). Returns how many were deleted."""
    until = (now or timezone.now()) - GRACE
    deleted, after = 0, 0
    while deleted < most:
        with transaction.atomic():
            ids = list(File.objects.filter(expires_at__lte=until, pk__gt=after).order_by("pk")
                       .values_list("pk", flat=True)[:chunk])
            if not ids:
                break
            after = ids[-1]
            # Locked first, then checked: a batch being created from one of them waits for this transaction.
            rows = list(File.objects.select_for_update().filter(pk__in=ids).order_by("pk"))
            busy = set(Batch.objects.filter(input_file_id__in=ids, status__in=UNFINISHED)
                       .values_list("input_file_id", flat=True))
            rows = [row for row in rows if row.pk not in busy]
            File.objects.filter(pk__in=[row.pk for row in rows]).delete()
        for row in rows:
            remove_content(row)
        deleted += len(rows)
    if deleted:
        logger.info("deleted %d expired files", deleted)
    return deleted


def remove_content(row: File) -> None:
    try:
        storage.storage().delete(row.storage_name)
    except Exception:
        # The row is gone, so the file is deleted for its tenant; stray bytes are only the operator's concern.
        logger.exception("could not remove the content of expired file %s (%s)", row.public_id, row.storage_name)


def output_expiry(finished_at: datetime) -> datetime | None:
    """When a batch's output and error files expire: never, unless TOLLGATE_BATCH_OUTPUT_EXPIRY_DAYS is set."""
    days = settings.TOLLGATE_BATCH_OUTPUT_EXPIRY_DAYS
    return finished_at + timedelta(days=days) if days else None
