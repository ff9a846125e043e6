"""Tasks for the live worker of test_worker_metrics.py, which imports this module with --include."""

from __future__ import annotations

from celery import shared_task

SUCCEEDS = "tests.worker_metrics.succeeds"
FAILS = "tests.worker_metrics.fails"


@shared_task(name=SUCCEEDS)
def succeeds() -> str:
    return "ok"


@shared_task(name=FAILS)
def fails() -> None:
    raise RuntimeError("a task that fails, for the failure counter")
