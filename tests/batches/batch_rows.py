"""Batches, parts and lines written straight to the database, for tests that read them (stats, pages, admin)."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from batches import storage
from batches.models import Batch, BatchLine, BatchPart, File

from ..conftest import Party


def make_batch(party: Party, *, status: str = Batch.Status.IN_PROGRESS, queue: str = "default", total: int = 0,
               succeeded: int = 0, failed: int = 0, running: int = 0, **fields: Any) -> Batch:
    """A batch with ``succeeded``/``failed``/``running`` claimed lines (rows and counters alike), in one part."""
    batch = Batch.objects.create(tenant=party.tenant, key=party.key, endpoint=Batch.Endpoint.CHAT,
                                 input_file_public_id="file-input", queue=queue, status=status, total=total,
                                 completed=succeeded, failed=failed, parts=1 if total else 0, **fields)
    if total:
        BatchPart.objects.create(batch=batch, tenant=party.tenant, number=0, first_line=0, last_line=total,
                                 state=BatchPart.State.RUNNING if running else BatchPart.State.PENDING)
    states = ([BatchLine.State.SUCCEEDED] * succeeded + [BatchLine.State.FAILED] * failed
              + [BatchLine.State.RUNNING] * running)
    BatchLine.objects.bulk_create(BatchLine(batch=batch, tenant=party.tenant, index=i, custom_id=f"line-{i}", state=state)
                                  for i, state in enumerate(states))
    return batch


def make_file(party: Party, content: bytes, *, name: str = "out.jsonl", purpose: str = File.Purpose.BATCH_OUTPUT) -> File:
    return storage.save(tenant_id=party.tenant.pk, key_id=None, purpose=purpose, filename=name,
                        content=BytesIO(content), size=len(content))
