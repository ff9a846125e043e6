"""The Batch object of OpenAI's API, as the official SDKs parse it (openai.types.Batch)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .models import Batch


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def batch_object(batch: Batch) -> dict[str, Any]:
    """The batch as /v1/batches answers it. Reads the output and error files' rows when the batch has them."""
    return {
        "id": batch.public_id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_public_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file.public_id if batch.output_file_id else None,
        "error_file_id": batch.error_file.public_id if batch.error_file_id else None,
        "created_at": unix(batch.created_at),
        "in_progress_at": unix(batch.in_progress_at),
        "expires_at": unix(batch.expires_at),
        "finalizing_at": unix(batch.finalizing_at),
        "completed_at": unix(batch.completed_at),
        "failed_at": unix(batch.failed_at),
        "expired_at": unix(batch.expired_at),
        "cancelling_at": unix(batch.cancelling_at),
        "cancelled_at": unix(batch.cancelled_at),
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "metadata": batch.metadata,
        "model": batch.model or None,
    }


def batch_list(batches: list[Batch], *, has_more: bool) -> dict[str, Any]:
    """A page of batches in OpenAI's list envelope."""
    data = [batch_object(batch) for batch in batches]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
