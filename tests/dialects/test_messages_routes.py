"""/v1/messages end to end, in process through the lean ASGI handler: the demo model, an OpenAI-compatible upstream
(translated both ways) and an Anthropic deployment (relayed as sent), each answer parsed by the anthropic SDK's
types, each request leaving one ledger row with the provider's usage, prompt-cache counts included."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic.types
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from asgiref.sync import async_to_sync
from pydantic import TypeAdapter

from accounts.models import Tenant
from billing.models import Price, UsageRecord
from proxy import routing
from proxy.models import Provider
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..factories import make_route
from ..live import serve_app
from ..proxy.v1_client import AsgiReply, api_handler, asgi
from . import messages_upstream
from .dialect_checks import assert_anthropic_error, sse_events

URL = "/v1/messages"
EVENTS: TypeAdapter[Any] = TypeAdapter(anthropic.types.RawMessageStreamEvent)
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    with serve_app(messages_upstream.app) as url:
        yield url


@pytest.fixture
def routes(alice: Party, upstream_url: str) -> Party:
    ensure_demo_route()
    make_route("gpt-mock", upstream_model="up-model", base_url=f"{upstream_url}/v1", provider_name="chat-mock")
    make_route("claude-mock", upstream_model="claude-upstream", base_url=upstream_url, kind="anthropic",
               provider_name="anthropic-mock")
    make_route("claude-busy", upstream_model="claude-529", base_url=upstream_url, kind="anthropic",
               provider_name="anthropic-mock")
    provider = Provider.objects.get(name="anthropic-mock")
    provider.set_credential("sk-ant-upstream-secret")
    provider.save()
    routing.invalidate()
    for model in ("demo", "gpt-mock", "claude-mock"):
        Price.objects.create(model=model, input_per_million=Decimal("3"), output_per_million=Decimal("15"))
    messages_upstream.received.clear()
    return alice


def post(party: Party, data: dict[str, Any], query: bytes = b"", **headers: str) -> AsgiReply:
    raw = json.dumps(data).encode()
    return asgi(URL, query=query, chunks=[raw], headers={"x-api-key": party.secret, "anthropic-version": "2023-06-01",
                                            "content-type": "application/json", "content-length": str(len(raw)),
                                            **headers})


def body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "Weather in Paris?"}], **fields}


def row_of(reply: AsgiReply) -> UsageRecord:
    rows = list(UsageRecord.objects.all())
    assert len(rows) == 1, [(r.endpoint, r.end_reason) for r in rows]
    assert rows[0].request_id == uuid.UUID(reply["x-request-id"]) and rows[0].endpoint == "messages"
    return rows[0]


def streamed(reply: AsgiReply) -> tuple[list[Any], Any]:
    """The events, each parsed by the SDK's types, and the message the SDK's accumulator builds from them."""
    assert reply.status == 200 and reply["content-type"].startswith("text/event-stream"), reply.content
    parsed, snapshot, buffers = [], None, {}  # type: ignore[var-annotated]
    for name, data in sse_events(reply.content):
        assert name == data["type"]
        if name == "ping":
            continue
        event = EVENTS.validate_python(data)
        parsed.append(event)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert parsed[0].type == "message_start" and parsed[-1].type == "message_stop"
    return parsed, snapshot


def test_demo_model_whole(routes: Party) -> None:
    reply = post(routes, body("demo"))
    assert reply.status == 200, reply.content
    message = anthropic.types.Message.model_validate(reply.json())
    assert message.model == "demo" and message.stop_reason == "end_turn" and message.id.startswith("msg_")
    assert message.content[0].text.startswith("Hello from Tollgate's demo model! You said: “Weather in Paris?”")
    row = row_of(reply)
    assert (row.end_reason, row.status_code, row.stream) == ("complete", 200, False)
    assert (row.prompt_tokens, row.completion_tokens) == (message.usage.input_tokens, message.usage.output_tokens)
    assert row.usage_source == "provider" and row.cost_picos > 0


def test_demo_model_streamed(routes: Party) -> None:
    reply = post(routes, body("demo", stream=True, max_tokens=5))
    events, message = streamed(reply)
    assert [e.type for e in events] == ["message_start", "content_block_start", *["content_block_delta"] * 5,
                                        "content_block_stop", "message_delta", "message_stop"]
    assert message.stop_reason == "max_tokens" and message.content[0].text == "Hello from Tollgate's"
    row = row_of(reply)
    assert (row.end_reason, row.stream, row.completion_tokens) == ("complete", True, 5)
    assert row.prompt_tokens == message.usage.input_tokens > 0


def test_translated_to_an_openai_compatible_upstream_with_tools(routes: Party) -> None:
    data = body("gpt-mock", system="Be brief.", tools=[WEATHER], tool_choice={"type": "any"}, stop_sequences=["END"])
    reply = post(routes, data)
    assert reply.status == 200, reply.content
    sent = messages_upstream.received[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"] == {"model": "up-model", "max_tokens": 100, "stop": ["END"], "tool_choice": "required",
                            "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Weather in Paris?"}],
                            "tools": [{"type": "function", "function": {"name": "get_weather", "description": WEATHER["description"],
                                                                        "parameters": WEATHER["input_schema"]}}]}
    message = anthropic.types.Message.model_validate(reply.json())
    assert message.model == "gpt-mock" and message.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in message.content] == [("tool_use", "call_up", "get_weather", {"city": "Paris"})]
    assert message.usage.model_dump(include={"input_tokens", "output_tokens", "cache_read_input_tokens"}) == {
        "input_tokens": 32, "output_tokens": 12, "cache_read_input_tokens": 8}
    row = row_of(reply)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.provider) == (40, 12, 8, "chat-mock")


def test_translated_stream_from_an_openai_compatible_upstream(routes: Party) -> None:
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_9", "name": "get_weather",
                                                  "input": {"city": "Paris"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "Sunny"}]}]
    reply = post(routes, body("gpt-mock", messages=history, stream=True))
    _, message = streamed(reply)
    assert message.content[0].text == "Hi there." and message.usage.input_tokens == 32
    sent = messages_upstream.received[-1]["body"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_9", "content": "Sunny"}]
    reply = post(routes, body("gpt-mock", tools=[WEATHER], stream=True))
    _, message = streamed(reply)
    assert message.content[0].input == {"city": "Paris"} and message.stop_reason == "tool_use"
    rows = list(UsageRecord.objects.order_by("id"))
    assert [(r.endpoint, r.prompt_tokens, r.completion_tokens, r.stream) for r in rows] == [("messages", 40, 12, True)] * 2


def test_an_anthropic_deployment_gets_the_body_as_sent_and_cache_usage_reaches_the_ledger(routes: Party) -> None:
    data = body("claude-mock", system=[{"type": "text", "text": "Long context.", "cache_control": {"type": "ephemeral"}}],
                thinking={"type": "enabled", "budget_tokens": 1024}, top_k=5, some_future_field={"x": 1})
    reply = post(routes, data)
    assert reply.status == 200, reply.content
    sent = messages_upstream.received[-1]
    assert sent["path"] == "/v1/messages" and sent["body"] == {**data, "model": "claude-upstream"}
    assert sent["headers"]["x-api-key"] == "sk-ant-upstream-secret" and sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent["headers"]
    answer = reply.json()
    assert answer == {**messages_upstream.message("claude-upstream"), "model": "claude-mock"}
    row = row_of(reply)
    assert (row.prompt_tokens, row.cached_tokens, row.cache_write_tokens, row.completion_tokens) == (3211, 3000, 200, 6)
    assert (row.provider, row.upstream_model, row.public_model) == ("anthropic-mock", "claude-upstream", "claude-mock")


def test_an_anthropic_deployment_streams_its_events_through(routes: Party) -> None:
    reply = post(routes, body("claude-mock", stream=True))
    events, message = streamed(reply)
    frames = [data for _, data in sse_events(reply.content)]
    upstream = [frame for _, frame in messages_upstream.anthropic_frames("claude-upstream")]
    assert frames[1:] == upstream[1:]  # everything but the model name passes unchanged, pings included
    assert frames[0]["message"] == {**upstream[0]["message"], "model": "claude-mock"}
    assert message.content[0].text == "Cached hello." and message.usage.cache_read_input_tokens == 3000
    assert messages_upstream.received[-1]["body"]["stream"] is True
    row = row_of(reply)
    assert (row.prompt_tokens, row.cached_tokens, row.cache_write_tokens, row.completion_tokens) == (3211, 3000, 200, 6)
    assert (row.end_reason, row.stream, row.usage_source) == ("complete", True, "provider")


def test_the_clients_beta_features_reach_an_anthropic_deployment(routes: Party) -> None:
    betas = "context-management-2025-06-27, interleaved-thinking-2025-05-14"
    data = body("claude-mock", context_management={"edits": [{"type": "clear_tool_uses_20250919"}]})
    assert post(routes, data, query=b"beta=true", **{"anthropic-beta": betas}).status == 200  # as Claude Code sends
    sent = messages_upstream.received[-1]
    assert sent["headers"]["anthropic-beta"] == betas and sent["body"]["context_management"] == data["context_management"]
    for malformed in ("a b", "x" * 1001, "ok,"):  # not a list of feature names: not passed on
        assert post(routes, body("claude-mock"), **{"anthropic-beta": malformed}).status == 200
        assert "anthropic-beta" not in messages_upstream.received[-1]["headers"]
    assert post(routes, body("claude-mock")).status == 200
    assert "anthropic-beta" not in messages_upstream.received[-1]["headers"]  # nothing left over from before
    assert post(routes, body("gpt-mock"), **{"anthropic-beta": betas}).status == 200
    assert "anthropic-beta" not in messages_upstream.received[-1]["headers"]


def test_a_server_tool_is_relayed_to_anthropic_and_refused_by_a_translated_route(routes: Party) -> None:
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
    reply = post(routes, body("gpt-mock", tools=[WEATHER, search]))
    error = assert_anthropic_error(reply.status, reply.headers, reply.content, 400)
    assert error["param"] == "tools[1].type" and "web_search_20250305" in error["message"]
    assert messages_upstream.received == []  # refused before any provider was asked
    assert (row_of(reply).end_reason, row_of(reply).status_code) == ("rejected", 400)
    reply = post(routes, body("claude-mock", tools=[WEATHER, search]))
    assert reply.status == 200 and messages_upstream.received[-1]["body"]["tools"] == [WEATHER, search]


def test_an_anthropic_deployment_failing_is_an_envelope_without_its_text(routes: Party) -> None:
    reply = post(routes, body("claude-busy"))
    error = assert_anthropic_error(reply.status, reply.headers, reply.content, 502)
    assert "secret" not in reply.content.decode() and error["type"] == "api_error"
    row = row_of(reply)
    assert (row.end_reason, row.status_code) == ("upstream_error", 502)


async def leave_after(raw: bytes, headers: dict[str, str], events: int) -> bytes:
    """Send the request through the /v1 handler and hang up once ``events`` SSE events arrived; returns them."""
    gone, sent = asyncio.Event(), []
    pending = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message.get("body", b""))
        if b"".join(sent).count(b"\n\n") >= events:
            gone.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": URL, "raw_path": URL.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()], "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8000)}
    await asyncio.wait_for(api_handler()(scope, receive, send), timeout=20)
    return b"".join(sent)


def test_a_client_leaving_mid_stream_leaves_one_row_billing_what_was_sent(routes: Party, settings: Any) -> None:
    settings.TOLLGATE_DEMO_TOKEN_DELAY_MS = 20
    raw = json.dumps(body("demo", stream=True, max_tokens=200)).encode()
    headers = {"x-api-key": routes.secret, "content-type": "application/json", "content-length": str(len(raw))}
    received = async_to_sync(leave_after)(raw, headers, 4)
    assert b"event: message_start" in received and b"message_stop" not in received
    for _ in range(200):  # the row is written as the cancelled stream ends
        if UsageRecord.objects.exists():
            break
        async_to_sync(asyncio.sleep)(0.01)
    async_to_sync(asyncio.sleep)(0.05)  # a second row, were one ever written, would show here
    rows = list(UsageRecord.objects.all())
    assert [(r.endpoint, r.end_reason, r.status_code) for r in rows] == [("messages", "client_gone", 499)]
    assert 0 < rows[0].completion_tokens < 200


def test_bob_cannot_use_a_model_only_alices_tenant_may(routes: Party, bob: Party) -> None:
    Tenant.objects.filter(pk=routes.tenant.pk).update(allowed_models=["claude-mock"])
    Tenant.objects.filter(pk=bob.tenant.pk).update(allowed_models=["demo"])
    assert post(routes, body("claude-mock")).status == 200
    error = assert_anthropic_error(*astuple(post(bob, body("claude-mock"))), 403)
    assert "claude-mock" in error["message"] and error["type"] == "permission_error"
    assert post(bob, body("demo")).status == 200
    assert UsageRecord.objects.filter(tenant=bob.tenant, public_model="claude-mock", end_reason="rejected").count() == 1


def astuple(reply: AsgiReply) -> tuple[int, dict[str, str], bytes]:
    return reply.status, reply.headers, reply.content
