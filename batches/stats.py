"""Queue statistics: how much batch work waits, runs and ended, per queue and per tenant.

Two grouped queries, whatever the number of batches or lines: one over the batches (their counters), one over the
running lines (the partial index ``batch_line_running``). Nothing counts a batch's succeeded or failed lines row by
row: a batch's ``completed`` and ``failed`` counters are kept in the same transaction as its lines' results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Count, Sum

from .models import Batch, BatchLine

# Batches whose unclaimed lines are still owed work (a cancelling batch's count until its runner finalizes it).
ACTIVE = (Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS, Batch.Status.CANCELLING)
STATUSES = [status.value for status in Batch.Status]


@dataclass
class Counts:
    """depth: lines of active batches not claimed yet; waiting_batches: validating batches, whose number of lines
    is not known yet; running: lines being executed; done / failed: lines that ended so, over every batch kept."""

    depth: int = 0
    waiting_batches: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    batches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))

    def add(self, other: Counts) -> None:
        self.depth += other.depth
        self.waiting_batches += other.waiting_batches
        self.running += other.running
        self.done += other.done
        self.failed += other.failed
        for status, n in other.batches.items():
            self.batches[status] = self.batches.get(status, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "waiting_batches": self.waiting_batches, "running": self.running,
                "done": self.done, "failed": self.failed, "batches": dict(self.batches)}


@dataclass
class QueueStats:
    queues: dict[str, Counts]  # every configured queue, plus any other queue a batch names (a route's own)
    tenants: dict[tuple[str, str], Counts]  # (queue, tenant slug), only pairs that have batches


def tiers() -> dict[str, str]:
    """Queue name -> the tier it serves (high/default/low); a route's own queue has no tier."""
    return {name: tier for tier, name in settings.TOLLGATE_QUEUES.items()}


def queue_stats(*, tenant_ids: list[int] | None = None) -> QueueStats:
    """The counts of every queue and every (queue, tenant) pair; only the given tenants' batches when given."""
    batches = Batch.objects.all()
    running = BatchLine.objects.filter(state=BatchLine.State.RUNNING)
    if tenant_ids is not None:
        batches, running = batches.filter(tenant_id__in=tenant_ids), running.filter(tenant_id__in=tenant_ids)
    pairs: dict[tuple[str, str], Counts] = {}
    grouped = (batches.values("queue", "tenant__slug", "status")
               .annotate(n=Count("id"), total=Sum("total"), completed=Sum("completed"), failed=Sum("failed"))
               .order_by())
    for row in grouped:
        counts = pairs.setdefault((row["queue"], row["tenant__slug"]), Counts())
        counts.batches[row["status"]] = counts.batches.get(row["status"], 0) + row["n"]
        counts.done += row["completed"] or 0
        counts.failed += row["failed"] or 0
        if row["status"] == Batch.Status.VALIDATING:
            counts.waiting_batches += row["n"]
        elif row["status"] in ACTIVE:
            # Claimed lines are the ones that ended (the counters) and the ones running, subtracted below.
            counts.depth += (row["total"] or 0) - (row["completed"] or 0) - (row["failed"] or 0)
    lines = (running.values("batch__queue", "tenant__slug", "batch__status").annotate(n=Count("id")).order_by())
    for row in lines:
        counts = pairs.setdefault((row["batch__queue"], row["tenant__slug"]), Counts())
        counts.running += row["n"]
        if row["batch__status"] in ACTIVE:
            counts.depth -= row["n"]
    for counts in pairs.values():
        counts.depth = max(counts.depth, 0)  # a counter and a line's row are written together; never below zero
    queues = {name: Counts() for name in settings.TOLLGATE_QUEUES.values()}
    for (queue, _), counts in sorted(pairs.items()):
        queues.setdefault(queue, Counts()).add(counts)
    return QueueStats(queues=queues, tenants=dict(sorted(pairs.items())))
