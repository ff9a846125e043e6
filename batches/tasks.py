"""Celery tasks of the queued path. Each takes ids and calls one service; the work happens in the worker only."""

from __future__ import annotations

from celery import shared_task

# Imported here, in the worker's main process before its pool forks: see the modules.
from . import priority, shutdown  # noqa: F401


@shared_task(name="batches.validate_batch")
def validate_batch(batch_id: int) -> None:
    """Check a new batch's input file; a valid batch is split into parts, each sent to the batch's queue."""
    from . import validation

    validation.validate_batch(batch_id)


@shared_task(name="batches.run_batch_part")
def run_batch_part(part_id: int) -> None:
    """Run one part's lines concurrently on this worker's event loop, under the part's lease."""
    from . import runner

    runner.run_part(part_id)


@shared_task(name="batches.tend_batches")
def tend_batches() -> None:
    """Beat job: hand parts of dead workers to others, expire batches past their window, finish done batches."""
    from . import runner

    runner.tend()


@shared_task(name="batches.delete_expired_files")
def delete_expired_files() -> None:
    """Beat job (hourly): delete expired files' content and rows, except the inputs of unfinished batches."""
    from . import expiry

    expiry.delete_expired_files()


@shared_task(name="batches.run_background_response")
def run_background_response(response_id: str) -> None:
    """Run a queued background Responses API request (sent by proxy/background.py) and store its answer."""
    from . import background

    background.run_background_response(response_id)


@shared_task(name="batches.tend_stored_responses")
def tend_stored_responses() -> None:
    """Beat job (every minute): fail background responses whose worker was lost, delete expired stored responses."""
    from . import background

    background.tend()
