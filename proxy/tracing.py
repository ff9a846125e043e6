"""OpenTelemetry traces of /v1 requests, sent over OTLP/HTTP. Imported only when TOLLGATE_OTLP_ENDPOINT is set.

Each request gets a span with four children (authenticate, gate, upstream, record), built once the request is
over from the times its Meter noted as it ran: a traced request adds to the hot path only those notes and the
ids chosen at its start, and the BatchSpanProcessor exports from its own thread, never on the event loop.
The upstream span's id goes to the provider in the traceparent header before the span exists, so the id
generator hands out ids chosen in advance when asked to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from . import observe, traceparent
from .metering import Meter
from .providers.base import CHAT

PATHS = {CHAT: "/v1/chat/completions"}  # the other endpoints' paths are their names


class PresetIds(RandomIdGenerator):
    """Random ids, except the one trace id and span id set with ``preset`` for the next span started."""

    def __init__(self) -> None:
        self.next = threading.local()

    def preset(self, *, trace_id: int = 0, span_id: int = 0) -> None:
        self.next.trace_id, self.next.span_id = trace_id, span_id

    def generate_trace_id(self) -> int:
        chosen = getattr(self.next, "trace_id", 0)
        self.next.trace_id = 0
        return chosen or super().generate_trace_id()

    def generate_span_id(self) -> int:
        chosen = getattr(self.next, "span_id", 0)
        self.next.span_id = 0
        return chosen or super().generate_span_id()


class Tracing:
    """The observer (proxy/observe.py) that turns each request's Meter into spans."""

    def __init__(self, processor: SpanProcessor, sampler: Sampler | None = None) -> None:
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):  # no OTEL_SERVICE_NAME given
            resource = resource.merge(Resource({SERVICE_NAME: "tollgate"}))
        self.ids = PresetIds()
        # Without a sampler given, the SDK's default: OTEL_TRACES_SAMPLER, else every request (or as the client says).
        self.provider = TracerProvider(resource=resource, id_generator=self.ids, sampler=sampler)
        self.sampler = self.provider.sampler
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("tollgate")

    def request_started(self, meter: Meter) -> None:
        parent = meter.trace_parent
        if parent is None:
            meter.trace_id = self.ids.generate_trace_id()
        meter.upstream_span_id = self.ids.generate_span_id()
        # Decided now, so the provider hears the same decision; a request left out costs nothing more at its end.
        decision = self.sampler.should_sample(remote_context(parent), meter.trace_id, "request").decision
        meter.trace_sampled = decision.is_sampled()
        traceparent.upstream.set(traceparent.header(meter.trace_id, meter.upstream_span_id, meter.trace_sampled))

    def request_ended(self, meter: Meter, *, end_reason: str, status: int, error_code: str) -> None:
        if meter.caller is None:
            self.build(meter, None)  # refused before authentication: no ledger row will follow

    def row_written(self, meter: Meter, record: Any) -> None:
        self.build(meter, record)

    def build(self, meter: Meter, record: Any) -> None:
        """Start and end every span of the request at the times it noted; the clocks differ by one offset."""
        if not meter.trace_sampled:
            return
        now = time.perf_counter()
        offset = time.time_ns() - int(now * 1e9)

        def ns(moment: float) -> int:
            return int(moment * 1e9) + offset

        ended = meter.ended or now
        end_reason, status, error_code = meter.outcome or ("", 0, "")
        request = self.request_span(meter, record, ns(meter.started), status)
        inside = trace.set_span_in_context(request)
        steps = [("authenticate", meter.started, meter.authenticated)]
        if meter.gate_started is not None:
            steps.append(("gate", meter.gate_started, meter.gated))
        for name, start, end in steps:
            span = self.tracer.start_span(name, inside, start_time=ns(start))
            if end is None:  # the request stopped in this step
                span.set_status(Status(StatusCode.ERROR, f"{end_reason} {error_code}".strip()))
            span.end(ns(end if end is not None else ended))
        if meter.upstream_started is not None:
            self.upstream_span(meter, inside, ns, ended)
        if record is not None:
            self.tracer.start_span("record", inside, start_time=ns(ended)).end(ns(now))
        request.end(ns(now if record is not None else ended))

    def request_span(self, meter: Meter, record: Any, start: int, status: int) -> Span:
        context = remote_context(meter.trace_parent)
        if context is None:
            self.ids.preset(trace_id=meter.trace_id)
        path = PATHS.get(meter.endpoint, f"/v1/{meter.endpoint}")
        span = self.tracer.start_span(f"POST {path}", context, kind=SpanKind.SERVER, start_time=start,
                                      attributes=request_attributes(meter, record, path))
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))  # a 4xx is the client's, not a failure of the server span
        return span

    def upstream_span(self, meter: Meter, inside: Context, ns: Callable[[float], int], ended: float) -> None:
        assert meter.upstream_started is not None
        self.ids.preset(span_id=meter.upstream_span_id)
        target = meter.target
        attributes: dict[str, Any] = {"tollgate.provider": target.provider_name,
                                      "gen_ai.response.model": target.upstream_model} if target else {}
        if meter.first_byte is not None:
            attributes["tollgate.ttfb_ms"] = round((meter.first_byte - meter.upstream_started) * 1000, 3)
        span = self.tracer.start_span("upstream", inside, kind=SpanKind.CLIENT, start_time=ns(meter.upstream_started),
                                      attributes=attributes)
        if meter.upstream_opened is not None:
            span.add_event("response headers", timestamp=ns(meter.upstream_opened))
        if meter.first_byte is not None:
            span.add_event("first byte", timestamp=ns(meter.first_byte))
        end_reason, status, error_code = meter.outcome or ("", 0, "")
        if status >= 400 and end_reason != "client_gone":
            span.set_status(Status(StatusCode.ERROR, f"{end_reason} {error_code}".strip()))
        span.end(ns(ended))


def remote_context(parent: traceparent.TraceParent | None) -> Context | None:
    """The client's span as the parent of the request span; None for a request that came without one."""
    if parent is None:
        return None
    flags = TraceFlags(TraceFlags.SAMPLED if parent.sampled else TraceFlags.DEFAULT)
    return trace.set_span_in_context(NonRecordingSpan(SpanContext(parent.trace_id, parent.span_id, True, flags)))


def request_attributes(meter: Meter, record: Any, path: str) -> dict[str, Any]:
    """What the request span says: ids, model, provider, outcome and tokens; the key only by its public prefix."""
    end_reason, status, error_code = meter.outcome or ("", 0, "")
    attributes: dict[str, Any] = {
        "tollgate.request_id": meter.request_id, "tollgate.endpoint": meter.endpoint, "http.request.method": "POST",
        "http.route": path, "http.response.status_code": status, "tollgate.end_reason": end_reason,
    }
    if error_code:
        attributes["tollgate.error_code"] = error_code
    if meter.caller is not None:
        attributes["tollgate.tenant_id"] = meter.caller.tenant_id
        attributes["tollgate.key_prefix"] = meter.caller.key_prefix
    if meter.body is not None:
        attributes["gen_ai.request.model"] = meter.body.model
        attributes["tollgate.stream"] = meter.body.stream
    if meter.target is not None:
        attributes["tollgate.provider"] = meter.target.provider_name
    if record is not None:
        attributes["gen_ai.usage.input_tokens"] = int(getattr(record, "prompt_tokens", 0) or 0)
        attributes["gen_ai.usage.output_tokens"] = int(getattr(record, "completion_tokens", 0) or 0)
        attributes["tollgate.cost_picos"] = int(getattr(record, "cost_picos", 0) or 0)
    return attributes


def install(processor: SpanProcessor, sampler: Sampler | None = None) -> Tracing:
    """Trace /v1 requests from now on, through ``processor``. Returns the observer (``uninstall`` takes it)."""
    tracing = Tracing(processor, sampler)
    observe.register(tracing)
    return tracing


def uninstall(tracing: Tracing) -> None:
    """Stop tracing; spans still queued are exported first."""
    observe.unregister(tracing)
    tracing.provider.shutdown()


def start() -> Tracing:
    """Export to TOLLGATE_OTLP_ENDPOINT in batches, from a thread of the SDK's.

    The exporter also reads the standard OTEL_EXPORTER_OTLP_TRACES_HEADERS, _TIMEOUT and _COMPRESSION, the
    batch processor OTEL_BSP_*, the sampler OTEL_TRACES_SAMPLER(_ARG), and the resource OTEL_SERVICE_NAME and
    OTEL_RESOURCE_ATTRIBUTES.
    """
    exporter = OTLPSpanExporter(endpoint=settings.TOLLGATE_OTLP_ENDPOINT)
    return install(BatchSpanProcessor(exporter))

