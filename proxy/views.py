"""The /v1 endpoints: authenticate -> gate -> route -> stream -> record, as plain async views."""

from __future__ import annotations

import asyncio
import logging
import time

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.keys import Caller
from gateway_site import drain, logs

from . import background, dialects, observe, outages, response_cache, routing, sse, traceparent, upkeep
from .asgi import STARTED, render
from .attribution import HEADER as ATTRIBUTION_HEADER, attribute
from .dialects import messages as messages_dialect
from .auth import authenticate
from .errors import Draining, GatewayError, MethodNotAllowed, NotFound, ServerError
from .limits import check_limits
from .metering import Meter
from .parsing import parse
from .providers.base import CHAT, COMPLETIONS, EMBEDDINGS, LARGE_BODY_BYTES, MESSAGES, RESPONSES
from .streaming import first_completion, guarded_relay, open_first

logger = logging.getLogger(__name__)
PATHS = {CHAT: "chat/completions"}


async def relay(request: HttpRequest, endpoint: str, caller: Caller | None = None) -> HttpResponseBase:
    """The whole /v1 path. ``caller`` is given by the playground, whose users sign in instead of sending a key."""
    meter = Meter(endpoint, request.scope.get(STARTED) if hasattr(request, "scope") else None)
    logs.request_context.set(meter)
    follow_trace(request, meter)
    observe.request_started(meter)
    upkeep.start()
    dialect = dialects.get(endpoint)  # None on the chat, completions and embeddings paths
    render = GatewayError.response if dialect is None else dialect.error_response
    try:
        meter.caller = caller or await authenticate(request)
        meter.authenticated = time.perf_counter()
        if request.method != "POST":
            raise MethodNotAllowed(f"Use POST for /v1/{PATHS.get(endpoint, endpoint)}.")
        size = body_size(request)
        # A large body is parsed in a worker thread: decoding megabytes of JSON would stall every other request.
        big = size > LARGE_BODY_BYTES
        meter.body = body = await asyncio.to_thread(parse, request, endpoint) if big else parse(request, endpoint)
        body.size = size
        attribute(meter, request.META.get(ATTRIBUTION_HEADER), body)  # tags and end user, before the gate reads them
        if dialect is not None:
            await dialect.prepare(body, meter.caller)
        targets = await routing.route(meter.caller, body.model)
        # Two attribute reads when neither the route nor the key asks for the response cache. Dialect answers are
        # not cached: the cache keeps chat answers.
        if dialect is None and (targets[0].cache.enabled or meter.caller.response_cache != "route"):
            meter.cache = response_cache.Ask(targets[0].cache)
        meter.gate_started = time.perf_counter()
        await check_limits(meter, targets)
        meter.gated = time.perf_counter()
        meter.target = targets[0]
        await meter.begin()  # written ahead: from here a killed process still leaves this request's row
        if meter.cache is not None and (cached := await response_cache.consult(request, meter, targets[0])) is not None:
            return with_ids(cached, meter)
        meter.upstream_started = time.perf_counter()
        if body.stream:
            upstream = await open_first(targets, body, meter)
            meter.upstream_opened = time.perf_counter()
            headers = {**sse.HEADERS, **meter.limit_headers(), "x-request-id": meter.request_id,
                       "x-tollgate-overhead-ms": meter.overhead_ms()}
            relayed = guarded_relay(upstream, body, meter)
            if meter.cache is not None:
                relayed = response_cache.recording(relayed, meter)
            return StreamingHttpResponse(relayed, content_type="text/event-stream", headers=headers)
        completion = await first_completion(targets, body, meter)
        if dialect is not None and (finish := getattr(dialect, "finish", None)) is not None:
            await finish(body, completion)  # e.g. a Response is stored before the client can continue from it
    except GatewayError as e:
        await meter.record(end_reason=e.end_reason, status=e.status, error_code=e.code or "")
        return with_ids(render(e), meter)
    except asyncio.CancelledError as e:
        if not drain.cancelled_by_drain(e):
            await meter.record(end_reason="client_gone", status=499)  # left before the provider answered
            raise
        drain.absorb()  # SIGTERM's grace period is over: answer 503 rather than vanish
        error = Draining("This Tollgate process is shutting down. Retry the request.")
        await meter.record(end_reason=error.end_reason, status=error.status, error_code=error.code or "")
        return with_ids(render(error), meter)
    except Exception as e:
        error = outages.unavailable(e)
        if error is None:
            logger.exception("unexpected error on /v1/%s (request %s)", endpoint, meter.request_id)
            error = ServerError("Tollgate failed to handle the request. It has been logged.")
        await meter.record(end_reason=error.end_reason, status=error.status, error_code=error.code or "")
        return with_ids(render(error), meter)
    await meter.record(end_reason="complete", status=200)
    if meter.cache is not None:
        await response_cache.keep(meter, completion)
    if completion.raw is not None:
        return with_ids(HttpResponse(completion.raw, content_type="application/json"), meter)
    return with_ids(JsonResponse(completion.payload), meter)


def follow_trace(request: HttpRequest, meter: Meter) -> None:
    """Join the client's trace when it sent a valid traceparent (an invalid one is ignored).

    With tracing off its header goes on to the provider unchanged; with tracing on, the tracing observer replaces
    it with one naming Tollgate's upstream span. Always set, so no request inherits another's.
    """
    value = request.META.get("HTTP_TRACEPARENT")
    parent = traceparent.parse(value) if value else None
    if parent is not None:
        meter.trace_parent, meter.trace_id = parent, parent.trace_id
        traceparent.upstream.set(traceparent.header(parent.trace_id, parent.span_id, parent.sampled))
    else:
        traceparent.upstream.set(None)


def body_size(request: HttpRequest) -> int:
    """The body's size, from its Content-Length when it has one: reading a large body happens in parse()'s thread."""
    declared = request.headers.get("Content-Length", "")
    if declared.isascii() and declared.isdigit() and len(declared) <= 18:
        return int(declared)
    try:
        return len(request.body)
    except (RequestDataTooBig, ValueError):
        return 0  # parse() answers a body too big, or a Content-Length it cannot read, with a 4xx


def with_ids(response: HttpResponseBase, meter: Meter) -> HttpResponseBase:
    for name, value in meter.limit_headers().items():
        response[name] = value
    response["x-request-id"] = meter.request_id
    response["x-tollgate-overhead-ms"] = meter.overhead_ms()
    return response


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    return await relay(request, CHAT)


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponseBase:
    return await relay(request, COMPLETIONS)


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponseBase:
    return await relay(request, EMBEDDINGS)


@csrf_exempt
async def messages(request: HttpRequest) -> HttpResponseBase:
    """Anthropic's Messages API: what ANTHROPIC_BASE_URL=<Tollgate> sends."""
    messages_dialect.note_headers(request)  # the beta features asked for, relayed to an Anthropic deployment
    return await relay(request, MESSAGES)


@csrf_exempt
async def responses(request: HttpRequest) -> HttpResponseBase:
    """OpenAI's Responses API (create). Background requests are queued, not run here (proxy/background.py)."""
    if request.method == "POST" and background.asked(request):
        return await background.create(request)
    return await relay(request, RESPONSES)


def model_object(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "tollgate"}


async def models_list(request: HttpRequest) -> HttpResponseBase:
    try:
        caller = await authenticate(request)
        current = await routing.table()
        # Routed, allowed to the tenant and to the key: a model either list leaves out is not listed.
        names = [name for name in current.models if caller.may_use(*current.names_of(name))]
    except GatewayError as e:
        return e.response()
    return JsonResponse({"object": "list", "data": [model_object(name) for name in names]})


async def model_detail(request: HttpRequest, model: str) -> HttpResponseBase:
    try:
        caller = await authenticate(request)
        targets = await routing.route(caller, model)
    except GatewayError as e:
        if isinstance(e, routing.PermissionDenied):  # a model the key may not use does not exist for it
            e = routing.ModelNotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")
        return e.response()
    return JsonResponse(model_object(targets[0].public_model))


@csrf_exempt
async def unknown_endpoint(request: HttpRequest, path: str) -> HttpResponseBase:
    # Authenticate first, as OpenAI does: an anonymous caller learns nothing about which paths exist.
    try:
        await authenticate(request)
        raise NotFound(f"Unknown endpoint: {request.method} /v1/{path}", code="unknown_url")
    except GatewayError as e:
        return render(request.path, e)  # /v1/messages/... in Anthropic's envelope
