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
from billing.journal import journal
from billing.ledger import write_rows
from billing.models import micros_to_dollars
from billing.services import UsageEntry

from . import observe, outages
from .db import db_step
from .providers.base import ApiRequest, Chunk, Target, Usage
from .ratelimits import RedisLimiter, limiter
from .traceparent import TraceParent

awrite_rows = db_step(write_rows)
BATCH = 200  # rows per INSERT at most
CHECKPOINT_SECONDS = 1.0  # how often a stream notes what it relayed in the journal

logger = logging.getLogger(__name__)

# Writes still running after their request was cancelled; a reference keeps each task alive until done.
_pending: set[asyncio.Future[Any]] = set()
# Requests begun in the journal and not yet settled, by request id; their leases are renewed while they run.
_open: dict[str, Meter] = {}
# Settlements that failed for an outage: (request id, hold, cost in picos, scopes), retried every second.
_unsettled: list[tuple[str, Any, int, list[Any]]] = []


class Meter:
    """Times and usage of one request, filled in as it runs; ``record`` writes them once."""

    plan: Any = None  # proxy.routing.Plan that the budget gate held money for, so retries keep to those deployments

    # When each step ended (perf_counter values), noted as the request runs: traces are built from them at the end
    # (proxy/tracing.py). Class defaults, so a request pays only for the steps it reaches.
    authenticated: float | None = None
    gate_started: float | None = None
    gated: float | None = None
    upstream_started: float | None = None
    upstream_opened: float | None = None  # a stream's response headers arrived
    ended: float | None = None  # record() was called: the outcome is known
    outcome: tuple[str, int, str] | None = None  # end reason, status, error code
    trace_parent: TraceParent | None = None  # the client's valid traceparent
    trace_id = 0  # the trace this request belongs to (the client's, or one tracing began); 0 for none
    upstream_span_id = 0  # the span id sent to providers when tracing is on
    trace_sampled = False  # tracing keeps this request's spans
    cache: Any = None  # proxy.response_cache.Ask when the response cache applies to this request
    batch_id = ""  # a batch line's batch (its public id) and custom_id: its row is unique by the two
    custom_id = ""
    images = 0  # input images of the request, counted at the gate, for per-image prices
    tags = ""  # the request's tags in billing.tags' stored form (",a,b,"), set before the gate (proxy/attribution.py)
    end_user = ""  # the request's `user` field, set with the tags

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
        self.prompt_tokens: int | None = None  # counted by the gate, when a budget or token limit needed it
        self.begun = False  # the journal has this request's begin line
        self.checkpointed = (0.0, 0)  # when the journal last noted the stream, and how many texts it had

    def limit_headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, what the tightest budget has left, and whether the response cache answered."""
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
            headers["x-tollgate-budget-remaining-usd"] = str(micros_to_dollars(max(left, 0)))  # exact, never a float
        headers["x-tollgate-cache"] = "hit" if self.cache is not None and self.cache.hit else "miss"
        return headers

    def observe(self, chunk: Chunk) -> None:
        now = time.perf_counter()
        if self.first_byte is None:
            self.first_byte = now
        if chunk.text:
            self.texts.append(chunk.text)
        if chunk.usage is not None:
            self.usage = chunk.usage
        if self.begun and (now - self.checkpointed[0] >= CHECKPOINT_SECONDS or chunk.usage is not None):
            self.checkpoint(now)

    def checkpoint(self, now: float) -> None:
        """Note in the journal what the stream relayed since the last note: a killed process bills it."""
        done = len(self.texts)
        usage = self.usage
        journal().checkpoint(self.request_id, "".join(self.texts[self.checkpointed[1]:done]),
                             {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                              "cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens}
                             if usage else None)
        self.checkpointed = (now, done)

    async def begin(self) -> None:
        """Write the journal's begin line: from here on, a row for this request survives a killed process."""
        caller, body, target = self.caller, self.body, self.target
        assert caller is not None and body is not None and target is not None
        fields: dict[str, Any] = {
            "tenant_id": caller.tenant_id, "key_id": caller.key_id, "endpoint": self.endpoint,
            "public_model": target.public_model, "provider": target.provider_name,
            "upstream_model": target.upstream_model, "stream": body.stream, "chat": body.is_chat,
            "at": time.time(), "gate": self.gate,
        }
        if self.prompt_tokens is not None:
            fields["prompt_tokens"] = self.prompt_tokens
        else:
            fields["prompt_texts"] = body.prompt_texts()
        if self.hold is not None and self.hold.keys:
            fields["hold"] = {"keys": self.hold.keys, "amount": self.hold.amount_micros}
        if self.batch_id:
            fields["batch_id"], fields["custom_id"] = self.batch_id, self.custom_id
        if caller.project_id is not None:
            fields["project_id"] = caller.project_id
        if self.tags:
            fields["tags"] = self.tags
        if self.end_user:
            fields["end_user"] = self.end_user
        if self.images:
            fields["images"] = self.images
        slots = limiter().slot_keys(self.scopes)
        if slots:
            fields["slots"] = slots
        settles = "hold" in fields or bool(slots)
        book = journal()
        if body.is_large:
            await asyncio.to_thread(book.begin, self.request_id, fields, settles=settles)  # big prompts: off the loop
        else:
            book.begin(self.request_id, fields, settles=settles)
        self.begun = True
        _open[self.request_id] = self

    def overhead_ms(self) -> str:
        return f"{(time.perf_counter() - self.started - self.upstream_seconds) * 1000:.2f}"

    def entry(self, *, end_reason: str, status: int, error_code: str = "") -> UsageEntry:
        caller, body, target, usage = self.caller, self.body, self.target, self.usage
        assert caller is not None
        sent = target is not None and end_reason != "rejected"
        now = self.ended or time.perf_counter()
        hit = self.cache is not None and self.cache.hit
        entry = UsageEntry(
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
            cache_write_tokens=usage.cache_write_tokens if usage else 0,
            images=self.images if sent else 0,
            prompt_texts=body.prompt_texts() if (body and sent and not usage) else [],
            completion_text="".join(self.texts) if (sent and not usage) else "",
            chat=bool(body and body.is_chat),
            gate=self.gate,
            latency_ms=round((now - self.started) * 1000),
            ttfb_ms=round((self.first_byte - self.started) * 1000) if self.first_byte else None,
            from_cache=hit,
            free=hit and self.cache.policy.free,
            project_id=caller.project_id,
            tags=self.tags,
            end_user=self.end_user,
        )
        if self.batch_id:
            entry.batch_id, entry.custom_id = self.batch_id, self.custom_id
        return entry

    @staticmethod
    def keep(task: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Hold a reference to a background task until it is done, so it is never collected half-way."""
        _pending.add(task)
        task.add_done_callback(_pending.discard)
        return task

    async def record(self, *, end_reason: str, status: int, error_code: str = "") -> None:
        """Write this request's ledger row once. Survives the request being cancelled again meanwhile."""
        if self.recorded:
            return
        self.recorded = True
        self.ended, self.outcome = time.perf_counter(), (end_reason, status, error_code)
        observe.request_ended(self, end_reason=end_reason, status=status, error_code=error_code)
        if self.caller is None:
            return  # unauthenticated requests belong to no tenant and leave no row
        entry = self.entry(end_reason=end_reason, status=status, error_code=error_code)
        task = self.keep(writer().write(entry))
        task.add_done_callback(functools.partial(report_lost_row, entry))
        task.add_done_callback(self.observe_row)
        if self.hold is not None or self.scopes:
            task = self.keep(asyncio.ensure_future(self.settle(task)))
        else:
            _open.pop(self.request_id, None)
        try:
            # A second cancellation (e.g. daphne's application-close timeout) stops this await, not the write.
            await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            pass  # the client still gets its answer; report_lost_row logged what the row would have held

    def log_fields(self) -> dict[str, Any]:
        """What a log line written during this request says about it (gateway_site/logs.py); never the key."""
        fields: dict[str, Any] = {"request_id": self.request_id, "endpoint": self.endpoint,
                                  "elapsed_ms": round(((self.ended or time.perf_counter()) - self.started) * 1000, 2)}
        if self.trace_id:
            fields["trace_id"] = f"{self.trace_id:032x}"
        if self.caller is not None:
            fields["tenant"], fields["key_prefix"] = self.caller.tenant_slug, self.caller.key_prefix
        if self.body is not None:
            fields["model"] = self.body.model
        if self.target is not None:
            fields["provider"] = self.target.provider_name
        if self.first_byte is not None:
            fields["ttfb_ms"] = round((self.first_byte - self.started) * 1000, 2)
        if self.outcome is not None:
            fields["end_reason"], fields["status"] = self.outcome[0], self.outcome[1]
        return fields

    def observe_row(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            observe.row_written(self, task.result())

    async def settle(self, written: asyncio.Future[Any]) -> None:
        """After the row is built: turn the budget hold into the row's cost and free the rate limit slot.

        If Redis or the database cannot take the settlement now, it is retried every second (see proxy/upkeep.py);
        the journal keeps it open until it is done, so a process that dies meanwhile leaves it to the recovery.
        """
        try:
            record = await written
            cost = record.cost_picos
        except Exception:
            cost = 0  # the row could not even be built (never expected): nothing to bill
        try:
            await settle(self.request_id, self.hold, cost, self.scopes)
        except Exception as e:
            if (dependency := outages.dependency_of(e)) is not None:
                outages.note(dependency, e)  # once per outage, not once per request
            else:
                logger.exception("request %s: settlement failed; retried every second", self.request_id)
            _unsettled.append((self.request_id, self.hold, cost, self.scopes))
            return
        _open.pop(self.request_id, None)


async def settle(request_id: str, hold: Any, cost: int, scopes: list[Any]) -> None:
    """Settle the hold at ``cost`` picos and free the slots, in one Redis round trip when both live there."""
    budgets, rates = holds.backend(), limiter()
    if isinstance(budgets, holds.RedisBackend) and isinstance(rates, RedisLimiter):
        both = [budgets.settlement(hold, cost) if hold is not None else None,
                rates.release_call(request_id, scopes) if scopes else None]
        calls = [call for call in both if call is not None]
        if calls:
            await scripts.run(budgets.url, calls)
    else:
        if hold is not None:
            await budgets.settle(hold, cost)
        if scopes:
            await rates.release(request_id, scopes)
    journal().settled(request_id)


async def settle_deferred() -> int:
    """Retry the settlements that failed (Redis or the database was down). Returns how many still wait."""
    waiting = list(_unsettled)
    _unsettled.clear()
    for request_id, hold, cost, scopes in waiting:
        try:
            await settle(request_id, hold, cost, scopes)
            _open.pop(request_id, None)
        except Exception:
            _unsettled.append((request_id, hold, cost, scopes))
    return len(_unsettled)


def in_flight() -> list[Meter]:
    """The requests of this process that hold a lease (a budget hold or an in-flight slot) right now."""
    return [meter for meter in _open.values() if meter.hold is not None or meter.scopes]


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
        records = await awrite_rows(entries)
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
