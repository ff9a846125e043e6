"""Helpers for the runner's tests: a validated batch (in progress, split into parts) as validation leaves it."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.db.models import Sum
from django.utils import timezone

from batches import storage
from batches.models import Batch, BatchPart, File
from billing.models import UsageRecord

from ..conftest import Party
from .conftest import store_jsonl


def line(custom_id: str, model: str = "mock", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"Say hello to {custom_id}"}],
                     "max_tokens": 5, **body}}


def running_batch(party: Party, lines: list[dict[str, Any]], *, part_lines: int = 1000, queue: str = "default",
                  **fields: Any) -> Batch:
    """A batch of ``lines`` in progress, split into parts of ``part_lines``, nothing sent yet."""
    row = store_jsonl(party, lines)
    now = timezone.now()
    endpoint = lines[0]["url"] if lines else Batch.Endpoint.CHAT
    batch = Batch.objects.create(
        tenant=party.tenant, key=party.key, endpoint=endpoint, input_file=row, input_file_public_id=row.public_id,
        model=lines[0]["body"]["model"] if lines else "", queue=queue, status=Batch.Status.IN_PROGRESS,
        total=len(lines), in_progress_at=now, **{"expires_at": now + timedelta(hours=24), **fields})
    numbers = range(0, len(lines), part_lines)
    BatchPart.objects.bulk_create(BatchPart(batch=batch, tenant=party.tenant, number=n, first_line=first,
                                            last_line=min(first + part_lines, len(lines)))
                                  for n, first in enumerate(numbers))
    Batch.objects.filter(pk=batch.pk).update(parts=len(numbers))
    batch.refresh_from_db()
    return batch


def read_file(row: File | None) -> list[dict[str, Any]]:
    if row is None:
        return []
    with storage.open_content(row) as f:
        return [json.loads(x) for x in f.read().splitlines() if x.strip()]


def rows_of(batch: Batch) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(batch_id=batch.public_id).order_by("custom_id"))


def ledger_picos(batch: Batch) -> int:
    return int(UsageRecord.objects.filter(batch_id=batch.public_id).aggregate(s=Sum("cost_picos"))["s"] or 0)
