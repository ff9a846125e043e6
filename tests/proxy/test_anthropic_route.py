"""A tool round trip through /v1/chat/completions to an Anthropic deployment, in process, stream and not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from billing.models import UsageRecord
from proxy import routing

from ..conftest import Party
from ..factories import make_route
from ..live import serve_app

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
USAGE = {"input_tokens": 20, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 500}
CALL = {"type": "tool_use", "id": "toolu_r", "name": "get_weather", "input": {"city": "Oslo"}}


async def anthropic(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Calls get_weather for Oslo, or, once given the result, answers in text."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body)
    seen.append(request)
    answered = request["messages"][-1]["content"][0]["type"] == "tool_result"
    if request.get("stream"):
        events: list[dict[str, Any]] = [
            {"type": "message_start", "message": {"id": "msg_r", "type": "message", "role": "assistant",
                                                  "content": [], "usage": {**USAGE, "output_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": {**CALL, "input": {}}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"ci'}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta",
                                                                   "partial_json": 'ty": "Oslo"}'}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
            {"type": "message_stop"}]
        payload = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
        kind = b"text/event-stream"
    else:
        content = [{"type": "text", "text": "It is 4 C in Oslo."}] if answered else [CALL]
        payload = json.dumps({"id": "msg_r", "type": "message", "role": "assistant", "model": request["model"],
                              "content": content, "stop_reason": "end_turn" if answered else "tool_use",
                              "stop_sequence": None, "usage": {**USAGE, "output_tokens": 9}}).encode()
        kind = b"application/json"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
    await send({"type": "http.response.body", "body": payload})


seen: list[dict[str, Any]] = []


@pytest.fixture
def claude(db: None) -> Iterator[None]:
    seen.clear()
    with serve_app(anthropic) as url:
        routing.invalidate()
        make_route("claude", upstream_model="claude-x", base_url=url, kind="anthropic", provider_name="claude-up")
        yield


def post(client: Client, party: Party, data: dict[str, Any]) -> Any:
    return client.post("/v1/chat/completions", json.dumps(data), content_type="application/json", headers=party.auth)


def test_a_tool_round_trip(client: Client, alice: Party, claude: None) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = post(client, alice, {"model": "claude", "messages": messages, "tools": [WEATHER], "tool_choice": "required"})
    assert first.status_code == 200, first.content
    answer = ChatCompletion.model_validate(first.json())
    assert answer.model == "claude" and answer.choices[0].finish_reason == "tool_calls"
    [call] = answer.choices[0].message.tool_calls or []
    assert seen[-1]["tool_choice"] == {"type": "any"} and seen[-1]["tools"][0]["name"] == "get_weather"
    # The client sends the call back with its result, as the SDKs do.
    messages += [answer.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "4 C"}]
    second = post(client, alice, {"model": "claude", "messages": messages, "tools": [WEATHER]})
    assert second.status_code == 200, second.content
    assert second.json()["choices"][0]["message"]["content"] == "It is 4 C in Oslo."
    assert seen[-1]["messages"][1:] == [
        {"role": "assistant", "content": [CALL]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_r", "content": "4 C"}]}]
    row = UsageRecord.objects.get(request_id=second["x-request-id"])
    assert (row.prompt_tokens, row.cached_tokens, row.cache_write_tokens, row.completion_tokens) == (820, 500, 300, 9)
    assert second.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 500}


def test_a_streamed_tool_call_reaches_the_client_with_usage(alice: Party, claude: None) -> None:
    data = {"model": "claude", "stream": True, "stream_options": {"include_usage": True}, "tools": [WEATHER],
            "messages": [{"role": "user", "content": "Weather in Oslo?"}]}

    async def streamed() -> tuple[Any, str]:
        response = await AsyncClient().post("/v1/chat/completions", json.dumps(data), content_type="application/json",
                                            headers=alice.auth)
        return response, b"".join([part async for part in response.streaming_content]).decode()

    response, text = async_to_sync(streamed)()
    frames = [line.removeprefix("data: ") for line in text.split("\n") if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(f) for f in frames[:-1]]
    arguments = "".join(call.function.arguments or "" for c in chunks for choice in c.choices
                        for call in choice.delta.tool_calls or [] if call.function is not None)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 820
    row = UsageRecord.objects.get(request_id=response["x-request-id"])
    assert (row.cache_write_tokens, row.cached_tokens, row.stream) == (300, 500, True)
