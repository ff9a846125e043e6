"""Running a batch on Celery workers: parts under leases, lines concurrently on one event loop per part.

``send_parts`` sends each part of a validated batch to the batch's queue. ``run_part`` (the task) takes the part's
lease, then runs its lines on an event loop: at most TOLLGATE_BATCH_CONCURRENCY[queue] in flight, each claimed (its
BatchLine inserted) before it runs, so no line runs twice, each executed as /v1 executes a request (batches/lines.py).
The worker's own housekeeping (proxy/upkeep.py: leases of holds and slots, journal recovery of dead processes)
runs on that loop meanwhile. ``tend`` (beat, every 10 s) hands the parts of dead workers to others and finalizes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from celery import signals
from django.conf import settings
from django.utils import timezone

from accounts.keys import KeyRejected, caller_by_id
from billing import journal
from billing.batching import GroupCommit
from proxy import limits, metering, outages, routing, upkeep
from proxy.auth import rejection
from proxy.db import db_step
from proxy.models import ModelRoute
from proxy.providers import http

from . import finalize, leases, pace, resending, shutdown
from .lines import ENDPOINTS, LineContext, batch_caller, output_line, run_line, unrun_line
from .models import Batch, BatchPart
from .reading import Line, requests, take, unclaimed

logger = logging.getLogger(__name__)
T = TypeVar("T")

WATCH_SECONDS = 1.0  # how often a running part reads its batch's status (a cancel is seen within this)
CALLER_SECONDS = 5.0  # how often it reads its key again (revoked, expired, tenant deactivated)
CLAIM_LINES = 50  # lines claimed in one INSERT at most


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def send_parts(batch: Batch) -> None:
    """Send run_batch_part for each part of the batch to its queue. Call once the parts are committed."""
    for part in BatchPart.objects.filter(batch_id=batch.pk, state=BatchPart.State.PENDING).order_by("number"):
        send_part(part.pk, batch.queue)


def send_part(part_id: int, queue: str) -> None:
    """Send the part's task for a worker to take (its first send, or after its worker was lost)."""
    BatchPart.objects.filter(pk=part_id).update(sent_at=timezone.now(), resends=0)
    publish_part(part_id, queue)


def publish_part(part_id: int, queue: str) -> None:
    from .tasks import run_batch_part

    run_batch_part.apply_async(args=[part_id], queue=queue)


def run_part(part_id: int) -> None:
    """Run a part under its lease, then finish it and, when it was the last, the batch. Returns at once when another
    worker holds the part."""
    worker = worker_name()
    part = leases.take_part(part_id, worker)
    if part is None:
        return
    run = PartRun(part, worker)
    async_to_sync(run.run)()
    if run.reason == "lease_lost":
        return  # tend() gave the part to another worker: it is theirs to finish
    if run.reason == "worker_stopping" and not run.all_started:
        # This worker shuts down (batches/shutdown.py): the lines it started are recorded; another worker resumes
        # the part now, not after the lease.
        if leases.give_back(part.pk, worker):
            send_part(part.pk, part.batch.queue)
        return
    leases.finish_part(part.pk, worker)
    finalize.maybe_finalize(part.batch_id)


class PartRun:
    """One part being run on this worker's event loop."""

    def __init__(self, part: BatchPart, worker: str) -> None:
        self.part, self.worker, self.batch = part, worker, part.batch
        # Why no new line may start: batch_cancelled, batch_expired, lease_lost, worker_stopping.
        self.reason: str | None = None
        self.all_started = False  # every line of the part was started (or had been by an earlier worker)
        self.context: LineContext | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.results = ResultWriter(part.batch_id)

    def stopped(self) -> str | None:
        return self.reason

    async def run(self) -> None:
        started = start_upkeep()
        try:
            self.context = await self.load_context()
            await self.check_batch()
            watcher = asyncio.ensure_future(self.watch())
            try:
                await self.start_lines()
            finally:
                # Whatever ended the loop above, lines in flight finish and are recorded before the loop closes.
                while self.tasks:
                    await asyncio.wait(list(self.tasks))
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        finally:
            await wind_down(started)

    async def load_context(self) -> LineContext:
        batch = self.batch
        try:
            caller = batch_caller(await db_step(caller_by_id)(batch.key_id))
            refusal = None
        except KeyRejected as e:
            caller, refusal = None, rejection(e.reason)
        choices = (await routing.table()).routes.get(batch.model)
        discount = None
        if choices:
            route = choices[0].target.public_model
            discount = await db_step(lambda: ModelRoute.objects.filter(name=route).values_list(
                "batch_discount_percent", flat=True).first())()
        return LineContext(batch.public_id, ENDPOINTS[batch.endpoint], caller, refusal, discount)

    async def check_batch(self) -> None:
        status, expires_at = await db_step(leases.batch_state)(self.batch.pk)
        self.reason = self.reason or leases.stop_reason(status, expires_at, timezone.now()) or (
            "worker_stopping" if shutdown.stopping() else None)

    async def watch(self) -> None:
        """Every second: has the batch been cancelled or expired? Every third of a lease: renew it."""
        renewed = checked_key = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                await self.check_batch()
                if time.monotonic() - renewed >= settings.TOLLGATE_BATCH_LEASE_SECONDS / 3:
                    if not await db_step(leases.renew)(self.part.pk, self.worker):
                        self.reason = "lease_lost"  # the lease ran out and went to another worker: start nothing
                    renewed = time.monotonic()
                if time.monotonic() - checked_key >= CALLER_SECONDS:
                    self.context = await self.load_context()
                    checked_key = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if (dependency := outages.dependency_of(e)) is not None:
                    outages.note(dependency, e)  # once per outage; lines keep running, new ones wait for the database
                else:
                    logger.exception("batch %s part %s: status check failed; trying again", self.batch.public_id,
                                     self.part.number)

    async def start_lines(self) -> None:
        """Start each unclaimed line of the part, at most the queue's concurrency in flight, until the part ends or
        the batch stops. Lines are claimed together when several slots are free at once (one INSERT for them all)."""
        part, batch = self.part, self.batch
        done = await self.retrying(db_step(leases.claimed), batch.pk, part.first_line, part.last_line)
        if done is None or self.reason:
            return
        if batch.input_file is None:
            self.all_started = True  # nothing left to read
            return
        slots = asyncio.Semaphore(concurrency(batch.queue))
        reader = requests(batch.input_file, part.first_line)
        source = unclaimed(reader, part.last_line, done)
        # A paced queue starts each line as its turn comes: claimed one by one.
        most = 1 if batch.queue in settings.TOLLGATE_BATCH_RATES else CLAIM_LINES
        try:
            while not self.reason:
                await slots.acquire()
                free = 1
                while free < most and not slots.locked():
                    await slots.acquire()
                    free += 1
                group = await take(source, free)
                paced = []
                for item in group:
                    await self.retrying(pace.wait_turn, batch.queue, self.stopped)
                    if self.reason:
                        break
                    paced.append(item)
                started = await self.start(paced, slots) if paced else 0
                for _ in range(free - started):
                    slots.release()
                if len(group) < free:
                    self.all_started = True
                    return
        finally:
            await asyncio.to_thread(reader.close)

    async def start(self, group: list[Line], slots: asyncio.Semaphore) -> int:
        """Claim the lines and start those this worker claimed (each frees its slot when done). Returns how many
        started; the others were claimed already (they must not run again) or the batch stopped meanwhile."""
        lines, attempts = [(i, c) for i, c, _, _ in group], 0

        async def claim() -> dict[int, int]:
            nonlocal attempts
            attempts += 1
            # After a failed attempt its INSERT may have committed all the same: take back what it claimed.
            retake = (self.part.pk, self.worker) if attempts > 1 else None
            return await db_step(leases.claim_lines)(self.batch.pk, self.batch.tenant_id, lines, retake)

        claimed = await self.retrying(claim)
        for index, custom_id, body, size in group:
            if claimed is None or index not in claimed:
                continue
            task = asyncio.ensure_future(self.execute(claimed[index], custom_id, body, size))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            task.add_done_callback(lambda _: slots.release())
        return len(claimed or ())

    async def execute(self, line_id: int, custom_id: str, body: dict[str, object], size: int) -> None:
        assert self.context is not None
        outcome = await run_line(self.context, custom_id, body, size, self.stopped)
        if outcome is None and self.reason == "worker_stopping":
            # It never ran: unclaimed, so the worker that resumes the part runs it.
            await self.retrying(db_step(leases.unclaim), line_id)
            return
        if outcome is None:  # stopped while it waited for a rate limit: it never ran
            code = "batch_worker_lost" if self.reason == "lease_lost" else (self.reason or "batch_cancelled")
            result, succeeded, status, request_id = unrun_line(custom_id, code), False, None, ""
        else:
            result, succeeded = output_line(custom_id, outcome), outcome.status == 200
            status, request_id = outcome.status, outcome.request_id
        save = functools.partial(self.results.submit, leases.Result(line_id, succeeded, status, request_id, result))
        # Kept trying through a database outage, unless the lease is lost meanwhile (the line is then given up as
        # lost with its worker; its ledger row is written either way).
        if await self.retrying(save, until=lambda: self.reason == "lease_lost") is None:
            logger.error("batch %s line %s: result not saved; reported as lost with its worker", self.batch.public_id,
                         custom_id)

    async def retrying(self, step: Callable[..., Awaitable[T]], *args: Any,
                       until: Callable[[], object] | None = None) -> T | None:
        """Run the step, again every second while the database or Redis is away; None once ``until()`` (by default:
        the batch stopped). Other errors are raised."""
        until = until or self.stopped
        while True:
            try:
                return await step(*args)
            except Exception as e:
                if (dependency := outages.dependency_of(e)) is None:
                    raise
                outages.note(dependency, e)
            if until():
                return None
            await asyncio.sleep(1.0)


def concurrency(queue: str) -> int:
    """Lines in flight per worker process on the queue; a route's own queue not named in the setting gets the default
    tier's."""
    per_queue = settings.TOLLGATE_BATCH_CONCURRENCY
    return per_queue.get(queue) or per_queue.get(settings.TOLLGATE_QUEUES["default"]) or 1


class ResultWriter(GroupCommit[leases.Result]):
    """Saves lines' results together: those that end while a save runs go in the next one (one transaction)."""

    def __init__(self, batch_id: int) -> None:
        super().__init__()
        self.batch_id = batch_id

    async def flush(self, items: list[leases.Result]) -> list[Any]:
        return await db_step(leases.save_results)(self.batch_id, items)


def start_upkeep() -> bool:
    """Start this loop's upkeep (proxy/upkeep.py) unless it runs already. Returns whether this call started it."""
    loop = asyncio.get_running_loop()
    running = upkeep._tasks.get(loop)
    if not settings.TOLLGATE_UPKEEP or (running is not None and not running.done()):
        return False
    upkeep.start()
    return True


async def wind_down(started_upkeep: bool) -> None:
    """Before the part's event loop closes: settle what an outage deferred, stop the upkeep this part started, close
    the loop's upstream connections."""
    await metering.settle_deferred()
    await limits.give_back_taken()
    if started_upkeep:
        await upkeep.stop()
    session = http._sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


def close_journal(**_: Any) -> None:
    """A pool process that ends (warm shutdown, max tasks per child) closes its ledger journal: a file whose requests
    are all done is deleted, one with requests still open is left for another process's recovery."""
    journal.close_journal()


# Sent in the pool process itself as it exits; connected when it first runs a part (the module is imported then).
signals.worker_process_shutdown.connect(close_journal, weak=False, dispatch_uid="tollgate-batch-journal")


def tend(now: datetime | None = None) -> None:
    """Beat job: give the parts of dead workers to others, send again the tasks whose messages may be lost (parts
    nobody took, validations that never ended), finalize what is ready."""
    now = now or timezone.now()
    for part in BatchPart.objects.filter(state=BatchPart.State.RUNNING, lease_expires_at__lt=now).select_related("batch"):
        if leases.release_part(part, now):
            send_if_running(part.pk, part.batch)
    resending.resend_lost(now, publish_part)
    for batch_id in finalize.unfinished(now):
        try:
            finalize.maybe_finalize(batch_id, now)
        except Exception:
            logger.exception("batch %s could not be finalized; the next run tries again", batch_id)


def send_if_running(part_id: int, batch: Batch) -> None:
    if batch.status == Batch.Status.IN_PROGRESS:
        send_part(part_id, batch.queue)
