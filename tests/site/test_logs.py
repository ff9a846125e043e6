"""Log lines: JSON with the request's ids when TOLLGATE_LOG_FORMAT=json, and never a credential in either format."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway_site.logs import JsonFormatter, PlainFormatter, RequestFilter
from proxy import routing, tracing, views
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..live import BASE_DIR
from ..proxy.v1_client import CHAT, HELLO, asgi, json_headers

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OPS_TOKEN = "ops-token-that-must-never-be-logged"
PROVIDER_KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """JSON lines of what the /v1 path logs, as the console handler would write them with TOLLGATE_LOG_FORMAT=json."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestFilter())
    logger = logging.getLogger("proxy")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def gate_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate logs one line while it runs, as any step of a request might."""
    check_limits = views.check_limits

    async def logging_check_limits(meter: Any, targets: Any) -> None:
        logging.getLogger("proxy.limits").info("gate checked")
        await check_limits(meter, targets)

    monkeypatch.setattr(views, "check_limits", logging_check_limits)


def demo_request(party: Party, **headers: str) -> Any:
    ensure_demo_route()
    routing.invalidate()
    body = json.dumps({"model": "demo", "messages": HELLO}).encode()
    reply = asgi(CHAT, chunks=[body], headers=json_headers(party, body, **headers))
    assert reply.status == 200, reply.content
    return reply


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_carries_the_requests_ids(alice: Party, captured: io.StringIO, gate_logs: None) -> None:
    reply = demo_request(alice, traceparent=f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01")
    [line] = [line for line in lines(captured) if line["message"] == "gate checked"]
    assert (line["level"], line["logger"]) == ("INFO", "proxy.limits")
    assert line["time"].endswith("+00:00")
    assert line["request_id"] == reply["x-request-id"]
    assert line["trace_id"] == CLIENT_TRACE  # the client's trace, even with tracing off
    assert (line["tenant"], line["key_prefix"], line["model"], line["endpoint"]) == (
        "alice", alice.key.prefix, "demo", "chat")
    assert isinstance(line["elapsed_ms"], float)
    assert alice.secret not in captured.getvalue()


def test_with_tracing_on_the_log_line_has_the_spans_trace_id(alice: Party, captured: io.StringIO,
                                                            gate_logs: None) -> None:
    exporter = InMemorySpanExporter()
    observer = tracing.install(SimpleSpanProcessor(exporter))
    try:
        demo_request(alice)
    finally:
        tracing.uninstall(observer)
    [line] = [line for line in lines(captured) if line["message"] == "gate checked"]
    trace_ids = {f"{span.context.trace_id:032x}" for span in exporter.get_finished_spans()}
    assert trace_ids == {line["trace_id"]}


def test_a_line_outside_a_request_has_no_request_fields() -> None:
    record = logging.LogRecord("billing.tasks", logging.WARNING, __file__, 1, "rollup %s late", ("daily",), None)
    contextvars.Context().run(RequestFilter().filter, record)  # as in a task no request runs in
    line = json.loads(JsonFormatter().format(record))
    assert line == {"time": line["time"], "level": "WARNING", "logger": "billing.tasks", "message": "rollup daily late"}


def test_an_exception_is_one_string_field() -> None:
    try:
        raise ValueError("upstream answer unreadable")
    except ValueError:
        record = logging.LogRecord("proxy.views", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert isinstance(line["exception"], str)
    assert line["exception"].startswith("Traceback") and "ValueError: upstream answer unreadable" in line["exception"]


@override_settings(TOLLGATE_OPS_TOKEN=OPS_TOKEN)
def test_no_credential_reaches_a_log_line(alice: Party) -> None:
    key = alice.secret
    management_token = "tgm-0123456789ab-" + "Q" * 40
    try:
        raise PermissionError(f"rejected {key}")
    except PermissionError:
        failure = sys.exc_info()
    records = [
        logging.LogRecord("proxy.auth", logging.WARNING, __file__, 1, "key %s refused", (key,), None),
        logging.LogRecord("proxy.http", logging.ERROR, __file__, 1, "upstream headers %s",
                          ({"Authorization": f"Bearer {PROVIDER_KEY}", "x-api-key": "anthropic-secret-value"},), None),
        logging.LogRecord("gateway_site.ops", logging.WARNING, __file__, 1, "Authorization: Bearer %s", (OPS_TOKEN,),
                          None),
        logging.LogRecord("accounts.api_auth", logging.INFO, __file__, 1, "token %s used", (management_token,), None),
        logging.LogRecord("proxy.views", logging.ERROR, __file__, 1, "failed", (), failure),
    ]
    records[0].model = f"model-named-{key}"  # a field a caller could fill with anything
    secrets = [key, key.split("-")[2], PROVIDER_KEY, "anthropic-secret-value", OPS_TOKEN, management_token]
    for formatter in (JsonFormatter(), PlainFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")):
        for record in records:
            record.exc_text = None
            text = formatter.format(record)
            assert not any(secret in text for secret in secrets), text
            assert "[redacted]" in text, text
    # The key's public id stays, so an operator can still find the key.
    assert f"tg-{alice.key.prefix}-[redacted]" in JsonFormatter().format(records[0])


def run_with_log_format(value: str) -> subprocess.CompletedProcess[str]:
    script = "import django, logging; django.setup(); logging.getLogger('billing.tasks').warning('rollup late')"
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test", "TOLLGATE_LOG_FORMAT": value}
    return subprocess.run([sys.executable, "-c", script], cwd=BASE_DIR, env=environment, capture_output=True,
                          text=True, timeout=60)


def test_the_log_format_setting_picks_the_formatter() -> None:
    done = run_with_log_format("json")
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert (line["level"], line["logger"], line["message"]) == ("WARNING", "billing.tasks", "rollup late")
    refused = run_with_log_format("xml")
    assert refused.returncode != 0 and "TOLLGATE_LOG_FORMAT must be plain or json" in refused.stderr
