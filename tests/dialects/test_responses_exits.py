"""How a Responses stream ends when it does not end well, through the /v1 handler that serves production: a provider
that cuts a translated stream (an `error` event, then `response.failed`), a client that leaves a native stream half-way,
a provider that reports no usage (estimated, on the last event and on the row). One row each, nothing stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from billing.models import UsageRecord
from proxy import routing
from proxy.models import Deployment, ModelRoute, Provider, StoredResponse

from ..conftest import Party
from ..factories import make_route
from ..live import serve_app
from ..proxy.v1_client import api_handler
from .responses_upstream import FAILING_MODEL, SLOW_MODEL, Upstream

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    with serve_app(Upstream()) as url:
        yield url


@pytest.fixture
def routes(db: None, upstream_url: str, mock_upstream_url: str) -> None:
    native = Provider.objects.create(name="openai-slow", kind="openai_compatible", preset="openai",
                                     base_url=f"{upstream_url}/v1")
    for name, model in (("native-slow", SLOW_MODEL), ("native-fails", FAILING_MODEL)):
        Deployment.objects.create(route=ModelRoute.objects.create(name=name), provider=native, upstream_model=model)
    for model in ("mock-cut", "mock-nousage"):
        make_route(model, upstream_model=model, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    routing.invalidate()


async def exchange(party: Party, body: dict[str, Any], leave_after_events: int | None = None) -> tuple[int, list[Any]]:
    """One streamed request through the /v1 handler; the client may hang up after some events."""
    raw = json.dumps({**body, "stream": True}).encode()
    pending = [{"type": "http.request", "body": raw, "more_body": False}]
    gone, sent = asyncio.Event(), []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if leave_after_events is not None and sum(m.get("body", b"").count(b"\n\n") for m in sent
                                                  if m["type"] == "http.response.body") >= leave_after_events:
            gone.set()

    headers = [(k.lower().encode(), v.encode()) for k, v in
               {**party.auth, "content-type": "application/json", "content-length": str(len(raw))}.items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/responses", "raw_path": b"/v1/responses", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    await asyncio.wait_for(api_handler()(scope, receive, send), timeout=20)
    status = next(m for m in sent if m["type"] == "http.response.start")["status"]
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
    events = [EVENTS.validate_python(json.loads(block.split("data: ", 1)[1])) for block in content.split("\n\n") if block]
    return status, events


def rows(party: Party) -> list[UsageRecord]:
    async def wait() -> list[UsageRecord]:
        for _ in range(300):  # a request cancelled by its client writes its row just after
            found = await sync_to_async(lambda: list(UsageRecord.objects.filter(tenant=party.tenant)))()
            if found:
                await asyncio.sleep(0.05)
                return await sync_to_async(lambda: list(UsageRecord.objects.filter(tenant=party.tenant)))()
            await asyncio.sleep(0.01)
        return []

    return async_to_sync(wait)()


def test_a_cut_translated_stream_ends_with_an_error_then_response_failed(alice: Party, routes: None) -> None:
    status, events = async_to_sync(exchange)(alice, {"model": "mock-cut", "input": "Hi"})
    kinds = [event.type for event in events]
    assert status == 200 and kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
    error, failed = events[-2:]
    assert error.code == "upstream_cut" and failed.response.status == "failed"
    assert failed.response.id == events[0].response.id and failed.response.error.code == "server_error"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    [row] = rows(alice)
    assert (row.endpoint, row.end_reason, row.status_code, row.error_code) == ("responses", "upstream_cut", 502,
                                                                               "upstream_cut")
    assert not StoredResponse.objects.filter(pk=events[0].response.id).exists()


def test_a_client_leaving_a_native_stream_leaves_one_row_billing_what_was_relayed(alice: Party, routes: None) -> None:
    status, events = async_to_sync(exchange)(alice, {"model": "native-slow", "input": "Hi"}, leave_after_events=30)
    assert status == 200 and events[0].type == "response.created" and events[-1].type != "response.completed"
    [row] = rows(alice)
    assert (row.endpoint, row.end_reason, row.status_code, row.stream) == ("responses", "client_gone", 499, True)
    assert row.completion_tokens > 0  # estimated from the deltas relayed before the client left
    assert not StoredResponse.objects.filter(pk=events[0].response.id).exists()


def test_a_provider_without_usage_gets_an_estimate_on_the_event_and_the_row(alice: Party, routes: None) -> None:
    status, events = async_to_sync(exchange)(alice, {"model": "mock-nousage", "input": "Hi there"})
    final = events[-1]
    assert status == 200 and final.type == "response.completed"
    [row] = rows(alice)
    assert row.end_reason == "complete" and row.completion_tokens > 0 and row.prompt_tokens > 0
    assert (final.response.usage.input_tokens, final.response.usage.output_tokens) == (row.prompt_tokens,
                                                                                       row.completion_tokens)


def test_a_native_response_failed_is_passed_on_once_and_recorded_as_a_failure(alice: Party, routes: None) -> None:
    status, events = async_to_sync(exchange)(alice, {"model": "native-fails", "input": "Hi"})
    assert status == 200 and [event.type for event in events] == ["response.created", "response.in_progress",
                                                                   "response.failed"]
    failed = events[-1].response
    assert failed.model == "native-fails" and failed.error.message == "The model failed."
    [row] = rows(alice)
    assert (row.end_reason, row.status_code, row.error_code) == ("upstream_error", 502, "upstream_error")
    assert (row.prompt_tokens, row.completion_tokens) == (21, 7)  # what the provider says it used is billed
