"""One batch line through the /v1 path: the key's permissions, the gate, routing, retries, the provider, the ledger.

The steps are proxy/views.py relay()'s, without HTTP: the line's body was decoded by the runner, its caller is the
key that created the batch (known by id, checked again as a presented key would be), and its answer is kept as a
line of the batch's output or error file instead of being sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from django.conf import settings

from accounts.keys import Caller, Limits
from gateway_site import logs
from proxy import observe, outages, routing
from proxy.attribution import attribute
from proxy.errors import GatewayError, RateLimited, ServerError, ServiceUnavailable
from proxy.limits import check_limits
from proxy.metering import Meter
from proxy.parsing import parse_data
from proxy.providers.base import CHAT, COMPLETIONS, EMBEDDINGS, LARGE_BODY_BYTES, ApiRequest, JSONDict
from proxy.streaming import first_completion

from .models import public_id

logger = logging.getLogger(__name__)

OUTAGE_SECONDS = 30  # how long a line waits at the gate for Redis or the database to come back
ENDPOINTS = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETIONS, "/v1/embeddings": EMBEDDINGS}
UNRUN = {
    "batch_cancelled": "The batch was cancelled before this request ran.",
    "batch_expired": "The batch expired (its completion window ended) before this request ran.",
    "batch_worker_lost": "The worker running this request stopped before it finished; its usage is in the ledger.",
}


@dataclass
class Outcome:
    """How a line ended: its HTTP status and the /v1 JSON answer (or error envelope) it would have had."""

    status: int
    body: JSONDict
    request_id: str


@dataclass
class LineContext:
    """What every line of one batch shares. ``caller`` is None when the key may no longer be used (``refusal``)."""

    batch_public_id: str
    endpoint: str  # CHAT, COMPLETIONS or EMBEDDINGS
    caller: Caller | None
    refusal: GatewayError | None = None
    discount: Decimal | None = None  # the route's batch discount in percent; None: the price's


def share(limits: Limits, percent: int) -> Limits:
    """A batch's share of rate limits: ``percent`` of each one, at least 1, checked on the same counters."""
    def part(value: int | None) -> int | None:
        return None if value is None else max(1, value * percent // 100)

    return Limits(requests_per_minute=part(limits.requests_per_minute),
                  tokens_per_minute=part(limits.tokens_per_minute), max_concurrent=part(limits.max_concurrent))


def batch_caller(caller: Caller) -> Caller:
    """The caller with TOLLGATE_BATCH_RATE_SHARE percent of its key's and tenant's limits (interactive keeps the rest)."""
    percent = settings.TOLLGATE_BATCH_RATE_SHARE
    return replace(caller, key_limits=share(caller.key_limits, percent),
                   tenant_limits=share(caller.tenant_limits, percent))


async def run_line(context: LineContext, custom_id: str, data: JSONDict, size: int = 0,
                   stopped: Callable[[], str | None] = lambda: None) -> Outcome | None:
    """Execute one line (``size``: its body's bytes); returns its outcome, or None when it never ran (``stopped()``
    named a reason while it waited for a rate limit). Never raises but CancelledError."""
    meter = Meter(context.endpoint)
    meter.batch_id, meter.custom_id = context.batch_public_id, custom_id
    return await execute(meter, context, data, size, stopped, what=f"batch {context.batch_public_id}, line {custom_id}")


async def execute(meter: Meter, context: LineContext, data: JSONDict, size: int = 0,
                  stopped: Callable[[], str | None] = lambda: None, *, what: str,
                  prepare: Callable[[ApiRequest, Caller], Awaitable[None]] | None = None,
                  tags_header: str | None = None) -> Outcome | None:
    """Run one request that no client waits on (a batch line, a background response) through the /v1 steps, its row
    in the ledger under ``meter``; ``prepare`` runs after parsing, before routing (a dialect's conversation state).
    Returns its outcome, or None when ``stopped()`` named a reason while it waited at the gate. Never raises but
    CancelledError."""
    logs.request_context.set(meter)  # this request's task only: log lines name it
    observe.request_started(meter)
    try:
        if context.caller is None:
            assert context.refusal is not None
            raise context.refusal  # as /v1 answers a revoked key: no caller, so no row
        meter.caller = context.caller
        # A large body is checked in a worker thread, as /v1 does: the other lines in flight share this loop.
        big = size > LARGE_BODY_BYTES
        meter.body = body = await asyncio.to_thread(parse_data, data, context.endpoint) if big \
            else parse_data(data, context.endpoint)
        if body.stream:
            raise GatewayError("Batch requests cannot stream.", param="stream", code="invalid_value")
        body.size = size
        # The line's metadata and user; a batch line has no headers of its own, a background response keeps its
        # creator's x-tollgate-tags.
        attribute(meter, tags_header, body)
        if prepare is not None:
            await prepare(body, meter.caller)
        targets = await routing.route(meter.caller, body.model)
        if not await admit(meter, targets, context, stopped):
            return None
        meter.target = targets[0]
        await meter.begin()  # written ahead: from here a killed worker still leaves this request's row
        meter.upstream_started = meter.gated
        completion = await first_completion(targets, body, meter)
    except GatewayError as e:
        await meter.record(end_reason=e.end_reason, status=e.status, error_code=e.code or "")
        return Outcome(e.status, e.envelope(), meter.request_id)
    except Exception as e:
        error = outages.unavailable(e)
        if error is None:
            logger.exception("unexpected error in %s", what)
            error = ServerError("Tollgate failed to handle the request. It has been logged.")
        await meter.record(end_reason=error.end_reason, status=error.status, error_code=error.code or "")
        return Outcome(error.status, error.envelope(), meter.request_id)
    await meter.record(end_reason="complete", status=200)
    return Outcome(200, completion.payload, meter.request_id)


async def admit(meter: Meter, targets: list[Any], context: LineContext, stopped: Callable[[], str | None]) -> bool:
    """Pass the gate. A rate limit refusal waits and asks again (it leaves no row), and so does an outage of Redis or
    the database for up to OUTAGE_SECONDS (no client is waiting); False if the batch stopped meanwhile. Raises the
    gate's other refusals (a budget's, a request too large for the limits) and a longer outage's 503."""
    outage_until = time.monotonic() + OUTAGE_SECONDS
    while True:
        meter.gate = {} if context.discount is None else {"batch_discount_percent": str(context.discount)}
        meter.gate_started = time.perf_counter()
        try:
            await check_limits(meter, targets)
        except (RateLimited, ServiceUnavailable) as e:
            if isinstance(e, ServiceUnavailable) and time.monotonic() > outage_until:
                raise
            # Nothing is kept for a refused request (what a failed call may have taken is given back under its id):
            # the next attempt is a new request for the gate and its holds.
            meter.request_id, meter.plan, meter.verdict = uuid.uuid4().hex, None, None
            wait = e.retry_after if isinstance(e, RateLimited) else 1
            for _ in range(max(int(wait), 1) * 4):
                if stopped() is not None:
                    return False
                await asyncio.sleep(0.25)
            continue
        meter.gated = time.perf_counter()
        return True


def output_line(custom_id: str, outcome: Outcome) -> str:
    """The line's entry in the output file (status 200) or the error file (any other status)."""
    return json.dumps({"id": public_id("batch_req_"), "custom_id": custom_id,
                       "response": {"status_code": outcome.status, "request_id": outcome.request_id,
                                    "body": outcome.body},
                       "error": None}, separators=(",", ":"))


def unrun_line(custom_id: str, code: str) -> str:
    """The error file's entry for a line that never ran (or whose worker died): no response, an error code."""
    return json.dumps({"id": public_id("batch_req_"), "custom_id": custom_id, "response": None,
                       "error": {"code": code, "message": UNRUN[code]}}, separators=(",", ":"))
