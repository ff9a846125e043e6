"""Batch workers run below the web processes' CPU priority, so interactive /v1 keeps priority when both compete for
a host's cores: a batch then takes what the web processes leave (README, "Batch workers").

A worker that consumes a batch queue raises its own niceness to TOLLGATE_BATCH_NICE before its pool forks, so every
pool process inherits it. Niceness orders processes within one cgroup: containers of their own (Docker Compose) are
weighted by their CPU shares instead (docker-compose.yml gives the batch workers a low share).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals
from django.conf import settings

logger = logging.getLogger(__name__)


def batch_queues() -> set[str]:
    return set(settings.TOLLGATE_QUEUES.values())


def consumes_batches(queues: set[str]) -> bool:
    """Whether a worker consuming ``queues`` runs batch work: a tier's queue, or any queue but housekeeping's (a
    route's own batch queue)."""
    return bool(queues & batch_queues()) or bool(queues - {"celery"})


def lower(niceness: int) -> None:
    """Raise every thread of this process to ``niceness`` (never lower it again: that needs privileges)."""
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [0]:
        try:
            if os.getpriority(os.PRIO_PROCESS, int(tid)) < niceness:
                os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
        except OSError:
            pass  # a thread that ended meanwhile


def lower_for_batches(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """celeryd_after_setup: sent in the worker's main process once its queues are known, before the pool forks."""
    niceness = settings.TOLLGATE_BATCH_NICE
    queues = set(getattr(getattr(instance.app.amqp.queues, "consume_from", None), "keys", lambda: [])())
    if niceness > 0 and consumes_batches(queues):
        lower(niceness)
        logger.info("batch worker on %s runs at niceness %d", ",".join(sorted(queues)), niceness)


signals.celeryd_after_setup.connect(lower_for_batches, weak=False, dispatch_uid="tollgate-batch-priority")
