"""Background Responses API runs (proxy/background.py queues them): one request through the /v1 steps on a worker.

The run is claimed by moving its stored response from queued to in_progress (a cancelled or already claimed one is
left alone, so a message delivered twice runs once), executed as a batch line is (batches/lines.py: the key checked
again, the gate, routing, retries, the provider, one ledger row with endpoint "responses"), and its answer stored
unless the client cancelled meanwhile. A cancel seen while the request waits at the gate stops it before the
provider; one that comes later leaves the response cancelled, and the ledger still has the row of what was spent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.keys import Caller, KeyRejected, caller_by_id
from proxy import outages
from proxy.attribution import PARAM as TAGS_HEADER
from proxy.auth import rejection
from proxy.background import publish
from proxy.db import db_step
from proxy.dialects import get_dialect
from proxy.metering import Meter
from proxy.models import StoredResponse
from proxy.providers.base import RESPONSES, ApiRequest, JSONDict, encode_json
from proxy.responses_store import storable

from .lines import OUTAGE_SECONDS, LineContext, Outcome, execute
from .runner import start_upkeep, wind_down

logger = logging.getLogger(__name__)
T = TypeVar("T")

Status = StoredResponse.Status
WATCH_SECONDS = 1.0  # how often a run reads its response's status (a cancel is seen within this)
RETRY_SECONDS = 1.0  # the wait between tries to store an answer while the database is out
CHUNK, MOST_PER_RUN = 100, 10_000  # expired responses deleted per statement, and at most per tend


@dataclass(frozen=True)
class Job:
    """What a worker needs of a claimed background response."""

    response_id: str
    key_id: int | None
    request: JSONDict
    created_at: int


def claim(response_id: str, now: datetime | None = None) -> Job | None:
    """Move the response from queued to in_progress and return its job; None when it is not queued (cancelled,
    deleted, or already taken by a copy of this message)."""
    now = now or timezone.now()
    with transaction.atomic():
        row = StoredResponse.objects.select_for_update().filter(pk=response_id, status=Status.QUEUED).first()
        if row is None:
            return None
        row.status, row.updated_at = Status.IN_PROGRESS, now
        row.response = {**(row.response or {}), "status": Status.IN_PROGRESS}
        row.save(update_fields=["status", "response", "updated_at"])
    created = row.response.get("created_at")
    return Job(row.pk, row.key_id, row.request or {}, created if isinstance(created, int) else int(now.timestamp()))


def status_of(response_id: str) -> str | None:
    return StoredResponse.objects.filter(pk=response_id).values_list("status", flat=True).first()


def store_result(response_id: str, status: str, response: JSONDict, now: datetime | None = None) -> bool:
    """Store the run's answer unless the response was cancelled or deleted meanwhile. Returns whether it was."""
    return bool(StoredResponse.objects.filter(pk=response_id).exclude(status=Status.CANCELLED).update(
        status=status, response=response, updated_at=now or timezone.now()))


def failed_response(response_id: str, error: JSONDict) -> JSONDict | None:
    """The stored Response object marked failed with ``error``; None when the response is gone."""
    response = StoredResponse.objects.filter(pk=response_id).values_list("response", flat=True).first()
    if response is None:
        return None
    return {**response, "status": Status.FAILED, "output": [], "error": error}


def error_of(outcome: Outcome) -> JSONDict:
    """The Response object's error for a failed request. The SDKs' ResponseError takes only OpenAI's own codes: a
    rate limit (429), an invalid prompt (another 4xx) or the server's failure; Tollgate's own code ends the message."""
    envelope = outcome.body.get("error") if isinstance(outcome.body.get("error"), dict) else {}
    code = "rate_limit_exceeded" if outcome.status == 429 else (
        "invalid_prompt" if 400 <= outcome.status < 500 else "server_error")
    message = str(envelope.get("message") or "The request failed.")
    if envelope.get("code"):
        message = f"{message} ({envelope['code']})"
    return {"code": code, "message": message}


astatus_of, astore_result = db_step(status_of, retry=True), db_step(store_result, retry=True)
afailed_response = db_step(failed_response, retry=True)


def run_background_response(response_id: str) -> None:
    """Run a queued background response to its end (the task). Returns at once when it is not queued."""
    job = claim(response_id)
    if job is None:
        logger.info("background response %s is not queued (cancelled or already run): nothing to do", response_id)
        return
    async_to_sync(BackgroundRun(job).run)()


class BackgroundRun:
    """One claimed background response on this worker's event loop."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.reason: str | None = None  # "cancelled" or "deleted": no new step may start

    def stopped(self) -> str | None:
        return self.reason

    async def run(self) -> None:
        started = start_upkeep()
        try:
            context = await self.load_context()
            watcher = asyncio.ensure_future(self.watch())
            try:
                data = {name: value for name, value in self.job.request.items()
                        if name not in ("background", "stream", TAGS_HEADER)}
                tags = self.job.request.get(TAGS_HEADER)
                outcome = await execute(Meter(RESPONSES), context, data, len(encode_json(data)), self.stopped,
                                        what=f"background response {self.job.response_id}", prepare=self.prepare,
                                        tags_header=tags if isinstance(tags, str) else None)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await self.finish(outcome)
        finally:
            await wind_down(started)

    async def load_context(self) -> LineContext:
        try:
            if self.job.key_id is None:
                raise KeyRejected(KeyRejected.UNKNOWN)  # the key was deleted since
            caller: Caller | None = await db_step(caller_by_id)(self.job.key_id)
            refusal = None
        except KeyRejected as e:
            caller, refusal = None, rejection(e.reason)
        return LineContext(self.job.response_id, RESPONSES, caller, refusal)

    async def prepare(self, body: ApiRequest, caller: Caller) -> None:
        """The dialect's conversation state, under the id and time the client was given; the answer is stored here
        (store_result), not by the dialect, so a cancel is never overwritten."""
        body.state["response_id"], body.state["created_at"] = self.job.response_id, self.job.created_at
        await get_dialect(RESPONSES).prepare(body, caller)
        body.state["store"] = False

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                status = await astatus_of(self.job.response_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("background response %s: status check failed; trying again", self.job.response_id)
                continue
            if status is None:
                self.reason = "deleted"
            elif status == Status.CANCELLED:
                self.reason = "cancelled"

    async def finish(self, outcome: Outcome | None) -> None:
        response_id = self.job.response_id
        if outcome is None:
            logger.info("background response %s %s before it reached the provider", response_id, self.reason)
            return
        if outcome.status == 200:
            response: dict[str, Any] = {**outcome.body, "id": response_id, "background": True, "store": True,
                                        "created_at": self.job.created_at}
            status = response.get("status")
            if status not in (Status.COMPLETED, Status.INCOMPLETE, Status.FAILED):
                status = response["status"] = Status.COMPLETED
        else:
            failed = await through_outage(afailed_response, response_id, error_of(outcome))
            if failed is None:
                return
            response, status = failed, Status.FAILED
        if not await through_outage(astore_result, response_id, str(status), storable(response)):
            logger.info("background response %s was cancelled or deleted while it ran; its answer is not kept",
                        response_id)


async def through_outage(step: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await step(*args)``, tried again every RETRY_SECONDS while the database or Redis is out, for up to
    OUTAGE_SECONDS: the answer was paid for, and a client polls for it. Raises the outage's error after that."""
    deadline = time.monotonic() + OUTAGE_SECONDS
    while True:
        try:
            return await step(*args)
        except Exception as e:
            dependency = outages.dependency_of(e)
            if dependency is None or time.monotonic() > deadline:
                raise
            outages.note(dependency, e)
            await asyncio.sleep(RETRY_SECONDS)


def tend(now: datetime | None = None) -> None:
    """Beat job: fail the background responses whose worker was lost, send again the runs whose message may be lost,
    delete the expired stored responses."""
    now = now or timezone.now()
    fail_lost(now)
    resend_waiting(now)
    delete_expired(now)


def fail_lost(now: datetime) -> int:
    """Mark failed (worker_lost) the responses in progress for longer than TOLLGATE_RESPONSES_LOST_SECONDS: their
    worker died (its ledger row is written by the journal's recovery). Returns how many."""
    since = now - timedelta(seconds=settings.TOLLGATE_RESPONSES_LOST_SECONDS)
    error = {"code": "worker_lost", "message": "The worker running this response stopped before it finished; its "
             "usage is in the ledger."}
    lost = 0
    for row in StoredResponse.objects.filter(status=Status.IN_PROGRESS, updated_at__lt=since).only("response")[:CHUNK]:
        response = {**(row.response or {}), "status": Status.FAILED, "output": [], "error": error}
        # Conditional: a run that ends at this moment keeps its own answer.
        lost += StoredResponse.objects.filter(pk=row.pk, status=Status.IN_PROGRESS, updated_at__lt=since).update(
            status=Status.FAILED, response=response, updated_at=now)
    if lost:
        logger.warning("%d background responses failed: their workers were lost", lost)
    return lost


def resend_waiting(now: datetime) -> int:
    """Send again the run of each response queued for longer than TOLLGATE_RESPONSES_LOST_SECONDS (its message may
    have been lost with a broker or a worker), at most once per that period: a copy that finds the response already
    claimed does nothing. Returns how many were sent."""
    since = now - timedelta(seconds=settings.TOLLGATE_RESPONSES_LOST_SECONDS)
    sent = 0
    waiting = StoredResponse.objects.filter(status=Status.QUEUED, updated_at__lt=since).values_list(
        "pk", "tenant__batch_tier")[:CHUNK]
    for response_id, tier in waiting:
        if not StoredResponse.objects.filter(pk=response_id, status=Status.QUEUED, updated_at__lt=since).update(
                updated_at=now):
            continue  # claimed or cancelled meanwhile
        try:
            publish(response_id, settings.TOLLGATE_QUEUES.get(tier, settings.TOLLGATE_QUEUES["default"]))
        except Exception:
            logger.exception("could not send background response %s again; the next run tries again", response_id)
            StoredResponse.objects.filter(pk=response_id, updated_at=now).update(updated_at=since)
            break
        sent += 1
    return sent


def delete_expired(now: datetime) -> int:
    """Delete stored responses past their expiry, CHUNK at a time, at most MOST_PER_RUN. Returns how many."""
    deleted = 0
    while deleted < MOST_PER_RUN:
        ids = list(StoredResponse.objects.filter(expires_at__lte=now).values_list("pk", flat=True)[:CHUNK])
        if not ids:
            break
        count, _ = StoredResponse.objects.filter(pk__in=ids, expires_at__lte=now).delete()
        if not count:
            break
        deleted += count
    return deleted
