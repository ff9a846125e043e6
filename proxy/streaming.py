"""Step four: reach a provider (falling over before the first byte) and relay its answer."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from asgiref.sync import sync_to_async

from billing import tokens
from gateway_site import drain

from . import dialects, retries, routing, sse, upstream
from .errors import Draining, GatewayError, ProviderError, ServerError
from .metering import Meter
from .providers.base import ApiRequest, Completion, Target, Upstream, Usage

logger = logging.getLogger(__name__)


T = TypeVar("T")


async def try_targets(targets: list[Target], meter: Meter, call: Callable[[Target], Awaitable[T]]) -> T:
    """Return the first result a target gives, retrying and falling back as proxy/retries.py decides (never
    after the first byte went out). Raises the last ProviderError if none gives one."""
    target = meter.target = targets[0]
    started = time.perf_counter()
    try:
        return await call(target)  # the plain path: one attempt, nothing more to do
    except ProviderError as e:
        error = e
    finally:
        meter.upstream_seconds += time.perf_counter() - started
    return await retries.keep_trying(targets, meter, call, error, started)


async def open_first(targets: list[Target], body: ApiRequest, meter: Meter) -> Upstream:
    """Return the first upstream stream that opens. Raises ProviderError."""
    return await try_targets(targets, meter, lambda target: upstream.open_stream(target, body))


async def first_completion(targets: list[Target], body: ApiRequest, meter: Meter) -> Completion:
    """Return the first whole answer a target gives. Raises ProviderError."""
    completion = await try_targets(targets, meter, lambda target: upstream.complete(target, body))
    assert meter.target is not None
    routing.report(meter.target, ok=True)
    meter.usage, meter.first_byte = completion.usage, time.perf_counter()
    if completion.usage is None and completion.text:
        meter.texts.append(completion.text)
    return completion


def guarded_relay(stream: Upstream, body: ApiRequest, meter: Meter) -> AsyncIterator[bytes]:
    """Return the relay generator, with a guard for a client that leaves before it ever starts.

    A generator that never started never runs its ``finally``: if the request task ends first (the
    client went away while headers were being sent), close the upstream and write the row here.
    """
    relay = relay_stream(stream, body, meter)
    task = asyncio.current_task()

    def if_never_started(_: object) -> None:
        if not meter.streaming:
            meter.keep(asyncio.ensure_future(abandon(stream, meter)))

    if task is not None:
        task.add_done_callback(if_never_started)
    return relay


async def abandon(stream: Upstream, meter: Meter) -> None:
    await stream.aclose()
    await meter.record(end_reason="client_gone", status=499)


async def relay_stream(stream: Upstream, body: ApiRequest, meter: Meter) -> AsyncIterator[bytes]:
    """Forward each upstream event as it arrives; always end with [DONE] or an in-band error."""
    meter.streaming = True
    end_reason, status, code = "client_gone", 499, ""  # unless the stream reaches one of its own ends
    dialect = dialects.get(body.endpoint)  # Messages and Responses name their events and end differently
    first: bytes | None = None  # the first event sent: a usage chunk made up here takes its id and model
    held = b""  # events marked `more`, written with the next one: a burst of events costs one write
    try:
        async for chunk in stream:
            meter.observe(chunk)
            if chunk.data is None or (chunk.usage_only and not body.include_usage):
                continue
            first = first or chunk.data
            frame = sse.frame(chunk.data) if chunk.event is None else sse.event(chunk.event, chunk.data)
            if chunk.more:
                held += frame
                continue
            if held:
                frame, held = held + frame, b""
            yield frame
        if held:
            yield held
            held = b""
        if body.include_usage and meter.usage is None:
            yield sse.frame(await estimated_usage_chunk(body, meter, first))
        assert meter.target is not None
        routing.report(meter.target, ok=True)
        end_reason, status = "complete", 200
        if dialect is None:
            yield sse.DONE
        elif dialect.done:
            yield dialect.done
    except ProviderError as e:
        # Headers are gone already: report the failure in-band and stop, never with a clean [DONE].
        end_reason, status, code = e.end_reason, e.status, e.code or ""
        yield held + in_band(e, body, dialect)
    except Exception:
        logger.exception("unexpected error while streaming (request %s)", meter.request_id)
        error = ServerError("Tollgate failed while streaming the answer. It has been logged.")
        end_reason, status, code = error.end_reason, 500, error.code
        yield held + in_band(error, body, dialect)
    except asyncio.CancelledError as e:
        if not drain.cancelled_by_drain(e):
            raise  # the client went away
        drain.absorb()  # SIGTERM's grace period is over: end in-band, as for an upstream failure
        error = Draining("This Tollgate process is shutting down; the answer was cut short.")
        end_reason, status, code = error.end_reason, error.status, error.code
        yield held + in_band(error, body, dialect)
    finally:
        if end_reason == "client_gone" and drain.grace_over:  # the drain's cancel reached us while sending
            end_reason, status, code = Draining.end_reason, Draining.status, Draining.code
        # On a client disconnect Django cancels us here; close the upstream first, then write the row.
        await stream.aclose()
        await meter.record(end_reason=end_reason, status=status, error_code=code)


def in_band(error: GatewayError, body: ApiRequest, dialect: dialects.Dialect | None) -> bytes:
    return error.sse_event() if dialect is None else dialect.error_event(body, error)


async def estimated_usage_chunk(body: ApiRequest, meter: Meter, first: bytes | None = None) -> bytes:
    """The usage chunk a client asked for when the provider sent none, with the id, model and time of the stream's
    first chunk (``first``) as every chunk of one answer has; counted in a worker thread."""
    usage = await sync_to_async(estimate)(body, "".join(meter.texts), meter.target)
    # meter.usage stays None, so the ledger row marks these numbers as estimated, not as provider usage.
    total = usage.prompt_tokens + usage.completion_tokens
    data = {"id": f"usage-{meter.request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": meter.target.public_model if meter.target else body.model, "choices": [],
            "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": total}}
    try:
        seen = json.loads(first) if first else None
    except ValueError:
        seen = None
    if isinstance(seen, dict):  # empty values are left out: Azure's first chunk has an empty id and model
        data.update({name: seen[name] for name, kind in (("id", str), ("model", str), ("created", int))
                     if isinstance(seen.get(name), kind) and seen[name]})
    return json.dumps(data, separators=(",", ":")).encode()


def estimate(body: ApiRequest, text: str, target: Target | None) -> Usage:
    model = target.upstream_model if target else body.model
    prompt, completion = tokens.estimate(body.prompt_texts(), text, model=model, chat=body.is_chat)
    return Usage(prompt_tokens=prompt, completion_tokens=completion)
