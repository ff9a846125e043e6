"""W3C trace context (https://www.w3.org/TR/trace-context/#traceparent-header): a client's ``traceparent`` in, and
the one sent on to providers. Plain string work with no OpenTelemetry import, since it also runs with tracing off:
a valid header from a client is then passed on to the provider unchanged, so the client's trace still reaches it."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

_HEX = frozenset("0123456789abcdef")

# The traceparent header for this request's upstream calls (proxy/providers/http.py), or None to send none.
upstream: ContextVar[str | None] = ContextVar("tollgate_upstream_traceparent", default=None)


@dataclass(frozen=True, slots=True)
class TraceParent:
    trace_id: int
    span_id: int
    sampled: bool


def parse(header: str) -> TraceParent | None:
    """The trace context a client sent, or None when the header is not one (it is then ignored, never refused)."""
    header = header.strip(" \t")
    # Version 00 is exactly 55 characters; a later version may append fields after a dash (the spec's forward rule).
    if len(header) < 55 or len(header) > 512 or (len(header) > 55 and header[55] != "-"):
        return None
    version, trace_id, span_id, flags = header[:2], header[3:35], header[36:52], header[53:55]
    if header[2] != "-" or header[35] != "-" or header[52] != "-" or version == "ff":
        return None
    if version == "00" and len(header) != 55:
        return None
    if not _HEX.issuperset(version + trace_id + span_id + flags):  # lower-case hex only, as the spec says
        return None
    parent = TraceParent(int(trace_id, 16), int(span_id, 16), bool(int(flags, 16) & 1))
    if not parent.trace_id or not parent.span_id:
        return None
    return parent


def header(trace_id: int, span_id: int, sampled: bool) -> str:
    """A version-00 traceparent value."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"
