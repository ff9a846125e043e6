"""Step five: what one request used, written as exactly one ledger row on every exit path."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from typing import Any

from accounts.keys import Caller
from billing import holds, live, scripts
from billing.batching import GroupCommit
from billing.services import UsageEntry, record_usages

from .db import db_step
from .providers.base import CHAT, ApiRequest, Chunk, Target, Usage
from .ratelimits import RedisLimiter, limiter

# A lost connection is retried once: the row is the request's bill and must not be dropped.
arecord_usages = db_step(record_usages, retry=True)
BATCH = 200  # rows per INSERT at most

logger = logging.getLogger(__name__)

# Writes still running after their request was cancelled; a reference keeps each task alive until done.
_pending: set[asyncio.Future[Any]] = set()


class Meter:
    """Times and usage of one request, filled in as it runs; ``record`` writes them once."""

    def __init__(self, endpoint: str, started: float | None = None) -> None:
        self.endpoint = endpoint
        self.request_id = uuid.uuid4().hex
        self.started = started or time.perf_counter()
        self.upstream_seconds = 0.0  # time spent waiting on the provider, excluded from our overhead
        self.first_byte: float | None = None
        self.usage: Usage | None = None
        self.texts: list[str] = []
        self.caller: Caller | None = None
        self.body: ApiRequest | None = None
        self.target: Target | None = None
        self.streaming = False  # the relay generator has started
        self.recorded = False
        self.gate: dict[str, Any] = {}  # why the gate admitted or denied, kept on the row
        self.hold: Any = None  # billing.holds.Hold while money is held for this request
        self.scopes: list[Any] = []  # rate limit scopes holding an in-flight slot
        self.verdict: Any = None  # the rate limiter's answer, for the x-ratelimit headers

    def limit_headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, and what the tightest budget has left."""
        headers: dict[str, str] = {}
        verdict = self.verdict
        if verdict is not None:
            reset = f"{verdict.reset_seconds}s"
            if verdict.limit_requests is not None:
                headers["x-ratelimit-limit-requests"] = str(verdict.limit_requests)
                headers["x-ratelimit-remaining-requests"] = str(max(verdict.remaining_requests or 0, 0))
                headers["x-ratelimit-reset-requests"] = reset
            if verdict.limit_tokens is not None:
                headers["x-ratelimit-limit-tokens"] = str(verdict.limit_tokens)
                headers["x-ratelimit-remaining-tokens"] = str(max(verdict.remaining_tokens or 0, 0))
                headers["x-ratelimit-reset-tokens"] = reset
        if self.hold is not None and (left := self.hold.remaining_micros()) is not None:
            headers["x-tollgate-budget-remaining-usd"] = f"{max(left, 0) / 1_000_000:.6f}"
        return headers

    def observe(self, chunk: Chunk) -> None:
        if self.first_byte is None:
            self.first_byte = time.perf_counter()
        if chunk.text:
            self.texts.append(chunk.text)
        if chunk.usage is not None:
            self.usage = chunk.usage

    def overhead_ms(self) -> str:
        return f"{(time.perf_counter() - self.started - self.upstream_seconds) * 1000:.2f}"

    def entry(self, *, end_reason: str, status: int, error_code: str = "") -> UsageEntry:
        caller, body, target, usage = self.caller, self.body, self.target, self.usage
        assert caller is not None
        sent = target is not None and end_reason != "rejected"
        now = time.perf_counter()
        return UsageEntry(
            request_id=self.request_id,
            tenant_id=caller.tenant_id,
            key_id=caller.key_id,
            endpoint=self.endpoint,
            end_reason=end_reason,
            status_code=status,
            error_code=error_code,
            public_model=target.public_model if target else (body.model if body else ""),
            provider=target.provider_name if target else "",
            upstream_model=target.upstream_model if target else "",
            stream=bool(body and body.stream),
            # No usage from a provider we did reach: estimate from what was asked and what was delivered.
            prompt_tokens=usage.prompt_tokens if usage else (None if sent else 0),
            completion_tokens=usage.completion_tokens if usage else (None if sent else 0),
            cached_tokens=usage.cached_tokens if usage else 0,
            prompt_texts=body.prompt_texts() if (body and sent and not usage) else [],
            completion_text="".join(self.texts) if (sent and not usage) else "",
            chat=bool(body and body.endpoint == CHAT),
            gate=self.gate,
            latency_ms=round((now - self.started) * 1000),
            ttfb_ms=round((self.first_byte - self.started) * 1000) if self.first_byte else None,
        )

    @staticmethod
    def keep(task: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Hold a reference to a background task until it is done, so it is never collected half-way."""
        _pending.add(task)
        task.add_done_callback(_pending.discard)
        return task

    async def record(self, *, end_reason: str, status: int, error_code: str = "") -> None:
        """Write this request's ledger row once. Survives the request being cancelled again meanwhile."""
        if self.recorded or self.caller is None:
            return  # unauthenticated requests belong to no tenant and leave no row
        self.recorded = True
        entry = self.entry(end_reason=end_reason, status=status, error_code=error_code)
        task = self.keep(writer().write(entry))
        task.add_done_callback(functools.partial(report_lost_row, entry))
        if self.hold is not None or self.scopes:
            task = self.keep(asyncio.ensure_future(self.settle(task)))
        try:
            # A second cancellation (e.g. daphne's application-close timeout) stops this await, not the write.
            await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            pass  # the client still gets its answer; report_lost_row logged what the row would have held

    async def settle(self, written: asyncio.Future[Any]) -> None:
        """After the row is written: turn the budget hold into the row's cost and free the rate limit slot."""
        try:
            record = await written
            cost = record.cost_micros
        except Exception:
            cost = 0  # no row, no spend: the ledger and the running totals stay in step
        budgets, rates = holds.backend(), limiter()
        if isinstance(budgets, holds.RedisBackend) and isinstance(rates, RedisLimiter):
            # Both in one round trip.
            both = [budgets.settlement(self.hold, cost) if self.hold is not None else None,
                    rates.release_call(self.request_id, self.scopes) if self.scopes else None]
            calls = [call for call in both if call is not None]
            try:
                if calls:
                    await scripts.run(budgets.url, calls)
            except Exception:
                logger.exception("request %s: budget hold or rate limit slot not given back; leases will", self.request_id)
            return
        try:
            if self.hold is not None:
                await budgets.settle(self.hold, cost)
        except Exception:
            logger.exception("budget hold of request %s could not be settled; its lease will release it", self.request_id)
        try:
            if self.scopes:
                await rates.release(self.request_id, self.scopes)
        except Exception:
            logger.exception("rate limit slot of request %s could not be freed; its lease will free it", self.request_id)


def report_lost_row(entry: UsageEntry, task: asyncio.Future[Any]) -> None:
    if task.cancelled() or task.exception() is None:
        return
    # Everything needed to re-create the row by hand, but never the prompt or answer text.
    fields = {k: v for k, v in vars(entry).items() if k not in ("prompt_texts", "completion_text")}
    logger.error("usage row could not be written: %s", fields, exc_info=task.exception())


class LedgerWriter(GroupCommit[UsageEntry]):
    """Group commit for the ledger: rows that arrive while an INSERT runs go together in the next one.

    Each request still waits until its own row is written. Alone, a row is written at once; under load,
    one thread hop and one round trip serve many requests.
    """

    limit = BATCH

    def write(self, entry: UsageEntry) -> asyncio.Future[Any]:
        return self.submit(entry)

    async def flush(self, entries: list[UsageEntry]) -> list[Any]:
        records = await arecord_usages(entries=entries)
        publish(records)
        return records


def publish(records: list[Any]) -> None:
    """Tell the live usage pages about the rows just written, in the background (never delays a request)."""
    if live.enabled():
        Meter.keep(asyncio.ensure_future(live.publish(records)))


_writers: dict[asyncio.AbstractEventLoop, LedgerWriter] = {}


def writer() -> LedgerWriter:
    loop = asyncio.get_running_loop()
    if loop not in _writers:
        for stale in [other for other in _writers if other.is_closed()]:
            del _writers[stale]
        _writers[loop] = LedgerWriter()
    return _writers[loop]
