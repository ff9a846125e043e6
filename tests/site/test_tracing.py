"""Traces of /v1 requests: one span per request with its four steps, W3C traceparent in from clients and out to
providers, OTLP/HTTP export, and nothing of OpenTelemetry on the request path while tracing is off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import uvicorn
from django.test import override_settings
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from bench import mock_upstream
from proxy import routing, tracing
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..factories import make_route
from ..live import BASE_DIR, free_port, wait_for_port
from ..proxy.v1_client import CHAT, HELLO, asgi, json_headers

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    observer = tracing.install(SimpleSpanProcessor(exporter))
    yield exporter
    tracing.uninstall(observer)


@contextmanager
def recording_upstream() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """The mock provider, noting each request's headers; yields its URL and the list of headers seen."""
    seen: list[dict[str, str]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append({k.decode("latin1"): v.decode("latin1") for k, v in scope["headers"]})
        await mock_upstream.app(scope, receive, send)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.should_exit = True
        thread.join(5)


@pytest.fixture
def upstream(db: None) -> Iterator[list[dict[str, str]]]:
    with recording_upstream() as (url, seen):
        make_route("traced", upstream_model="mock", base_url=f"{url}/v1", provider_name="recorder")
        routing.invalidate()
        yield seen


def send_chat(party: Party, *, stream: bool = True, **headers: str) -> Any:
    body = json.dumps({"model": "traced", "messages": HELLO, "stream": stream}).encode()
    reply = asgi(CHAT, chunks=[body], headers=json_headers(party, body, **headers))
    assert reply.status == 200, reply.content
    return reply


def request_and_children(exporter: InMemorySpanExporter) -> tuple[Any, list[Any]]:
    finished = exporter.get_finished_spans()
    requests = [span for span in finished if span.kind == SpanKind.SERVER]
    assert len(requests) == 1, [span.name for span in finished]
    request = requests[0]
    children = sorted((span for span in finished if span.parent and span.parent.span_id == request.context.span_id),
                      key=lambda span: span.start_time)
    assert len(children) == len(finished) - 1
    return request, children


def test_a_request_is_one_span_with_its_four_steps_in_order(spans: InMemorySpanExporter, alice: Party,
                                                            upstream: list[dict[str, str]]) -> None:
    reply = send_chat(alice)
    request, children = request_and_children(spans)
    assert request.name == "POST /v1/chat/completions"
    assert [child.name for child in children] == ["authenticate", "gate", "upstream", "record"]
    for earlier, later in zip(children, children[1:]):
        assert earlier.end_time <= later.start_time
    assert request.start_time <= children[0].start_time and children[-1].end_time <= request.end_time
    assert all(child.context.trace_id == request.context.trace_id for child in children)
    attributes = dict(request.attributes)
    assert attributes["tollgate.request_id"] == reply["x-request-id"]
    assert (attributes["tollgate.endpoint"], attributes["gen_ai.request.model"], attributes["tollgate.provider"]) == (
        "chat", "traced", "recorder")
    assert (attributes["http.response.status_code"], attributes["tollgate.end_reason"]) == (200, "complete")
    assert (attributes["tollgate.tenant_id"], attributes["tollgate.key_prefix"]) == (alice.tenant.pk, alice.key.prefix)
    assert attributes["gen_ai.usage.input_tokens"] > 0 and attributes["gen_ai.usage.output_tokens"] > 0
    assert not any(alice.secret in str(value) for span in (request, *children) for value in span.attributes.values())
    upstream_span = children[2]
    assert upstream_span.kind == SpanKind.CLIENT
    assert upstream_span.attributes["tollgate.ttfb_ms"] >= 0
    assert [event.name for event in upstream_span.events] == ["response headers", "first byte"]
    # The provider was told about the upstream span, in this trace.
    assert upstream[-1]["traceparent"] == f"00-{request.context.trace_id:032x}-{upstream_span.context.span_id:016x}-01"


def test_a_non_streamed_request_is_traced_too(spans: InMemorySpanExporter, alice: Party,
                                              upstream: list[dict[str, str]]) -> None:
    send_chat(alice, stream=False)
    request, children = request_and_children(spans)
    assert [child.name for child in children] == ["authenticate", "gate", "upstream", "record"]
    assert [event.name for event in children[2].events] == ["first byte"]


def test_a_clients_traceparent_makes_the_request_part_of_its_trace(spans: InMemorySpanExporter, alice: Party,
                                                                   upstream: list[dict[str, str]]) -> None:
    send_chat(alice, traceparent=CLIENT_PARENT)
    request, children = request_and_children(spans)
    assert f"{request.context.trace_id:032x}" == CLIENT_TRACE
    assert request.parent is not None and f"{request.parent.span_id:016x}" == CLIENT_SPAN
    sent = upstream[-1]["traceparent"]
    assert sent == f"00-{CLIENT_TRACE}-{children[2].context.span_id:016x}-01"


def test_a_client_that_does_not_sample_gets_no_spans_and_its_decision_goes_on(
        spans: InMemorySpanExporter, alice: Party, upstream: list[dict[str, str]]) -> None:
    send_chat(alice, traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00")
    assert spans.get_finished_spans() == ()
    assert upstream[-1]["traceparent"].startswith(f"00-{CLIENT_TRACE}-") and upstream[-1]["traceparent"].endswith("-00")


def test_a_request_the_sampler_leaves_out_has_no_spans_and_the_provider_hears_so(
        alice: Party, upstream: list[dict[str, str]]) -> None:
    exporter = InMemorySpanExporter()
    observer = tracing.install(SimpleSpanProcessor(exporter), sampler=ALWAYS_OFF)
    try:
        send_chat(alice)
    finally:
        tracing.uninstall(observer)
    assert exporter.get_finished_spans() == ()
    assert upstream[-1]["traceparent"].endswith("-00")


@pytest.mark.parametrize("header", [
    CLIENT_PARENT.upper(),  # the spec allows lower-case hex only
    f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # all-zero trace id
    f"00-{CLIENT_TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01",  # the forbidden version
    CLIENT_PARENT + "-extra",  # version 00 has no further fields
    f"00-{CLIENT_TRACE[:-1]}-{CLIENT_SPAN}-01",
    f"00_{CLIENT_TRACE}_{CLIENT_SPAN}_01",
    "x" * 4000,
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
])
def test_an_invalid_traceparent_is_ignored_and_the_request_succeeds(
        spans: InMemorySpanExporter, alice: Party, upstream: list[dict[str, str]], header: str) -> None:
    send_chat(alice, traceparent=header)
    request, _ = request_and_children(spans)
    assert request.parent is None
    assert f"{request.context.trace_id:032x}" != CLIENT_TRACE
    assert upstream[-1]["traceparent"].startswith(f"00-{request.context.trace_id:032x}-")


def test_a_later_version_is_read_by_its_version_00_fields(spans: InMemorySpanExporter, alice: Party,
                                                          upstream: list[dict[str, str]]) -> None:
    send_chat(alice, traceparent=f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-01-more")
    request, _ = request_and_children(spans)
    assert f"{request.context.trace_id:032x}" == CLIENT_TRACE


def test_a_request_refused_before_authentication_is_traced_without_a_record_step(
        spans: InMemorySpanExporter, db: None) -> None:
    body = json.dumps({"model": "demo", "messages": HELLO}).encode()
    reply = asgi(CHAT, chunks=[body], headers={"Content-Type": "application/json", "Authorization": "Bearer tg-nope"})
    assert reply.status == 401
    request, children = request_and_children(spans)
    assert [child.name for child in children] == ["authenticate"]
    assert children[0].status.status_code == StatusCode.ERROR
    assert request.attributes["http.response.status_code"] == 401
    assert "tollgate.key_prefix" not in request.attributes


def test_with_tracing_off_a_clients_traceparent_goes_to_the_provider_unchanged(
        alice: Party, upstream: list[dict[str, str]]) -> None:
    send_chat(alice, traceparent=CLIENT_PARENT)
    assert upstream[-1]["traceparent"] == CLIENT_PARENT
    send_chat(alice)  # the next request does not inherit it
    assert "traceparent" not in upstream[-1]
    send_chat(alice, traceparent=CLIENT_PARENT.upper())
    assert "traceparent" not in upstream[-1]


def run_request_in_a_fresh_process(**env: str) -> dict[str, Any]:
    """A /v1 request through the production handler in a new interpreter; what it imported and registered."""
    script = """
import json, sys, django
django.setup()
from asgiref.sync import async_to_sync
from proxy import observe, streaming, upstream
from proxy.providers import anthropic, compatible, http
from tests.proxy.v1_client import asgi_call
reply = async_to_sync(asgi_call)("/v1/chat/completions", chunks=[b'{"model": "demo"}'],
    headers={"Content-Type": "application/json", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
print(json.dumps({"status": reply.status, "otel": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
                  "observers": [type(o).__module__ for o in observe._observers]}))
"""
    environment = {name: value for name, value in os.environ.items() if name != "TOLLGATE_OTLP_ENDPOINT"}
    environment.update(DJANGO_SETTINGS_MODULE="gateway_site.settings_test", **env)
    done = subprocess.run([sys.executable, "-c", script], cwd=BASE_DIR, env=environment, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_with_tracing_off_the_request_path_imports_no_opentelemetry_and_registers_no_tracer() -> None:
    off = run_request_in_a_fresh_process()
    assert off["status"] == 401
    assert off["otel"] == []
    assert "proxy.tracing" not in off["observers"]
    # Nothing listens there: the exit's flush gives up after a second.
    on = run_request_in_a_fresh_process(TOLLGATE_OTLP_ENDPOINT="http://127.0.0.1:9/v1/traces",
                                        OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="1")
    assert on["status"] == 401 and "proxy.tracing" in on["observers"]


class Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_spans_are_posted_to_the_otlp_endpoint(alice: Party) -> None:
    ensure_demo_route()
    routing.invalidate()
    Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with override_settings(TOLLGATE_OTLP_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}/v1/traces"):
            observer = tracing.start()
        try:
            body = json.dumps({"model": "demo", "messages": HELLO}).encode()
            assert asgi(CHAT, chunks=[body], headers=json_headers(alice, body)).status == 200
            assert observer.provider.force_flush(10_000)
        finally:
            tracing.uninstall(observer)
    finally:
        server.shutdown()
        thread.join(5)
    assert Collector.received, "nothing was exported"
    path, content_type, payload = Collector.received[0]
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    assert payload and b"authenticate" in payload and b"tollgate" in payload
