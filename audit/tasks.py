from __future__ import annotations

from celery import shared_task

from . import services


@shared_task
def prune_entries() -> int:
    return services.prune_entries()
