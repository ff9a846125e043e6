"""Chat Completions streams as Anthropic's stream events, event by event, each parsed by the official anthropic SDK
(its event types, and the accumulator its MessageStream builds the final message with); and the events of an
Anthropic deployment passed on natively, usage and prompt-cache counts read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic.types
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from asgiref.sync import async_to_sync
from pydantic import TypeAdapter

from proxy.dialects.messages import DIALECT
from proxy.errors import ProviderError
from proxy.providers.anthropic_native import MessagesProvider
from proxy.providers.base import Chunk, JSONDict, Target, Usage
from proxy.providers.compatible import OpenAICompatibleProvider

EVENTS: TypeAdapter[Any] = TypeAdapter(anthropic.types.RawMessageStreamEvent)
BODY = {"model": "my-model", "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": "Weather?"}]}


def chunk(delta: JSONDict, finish: str | None = None) -> str:
    return json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


USAGE = json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": [],
                    "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39,
                              "prompt_tokens_details": {"cached_tokens": 10}}})


COMPATIBLE = Target(public_model="my-model", deployment_id=2, provider_name="mock", kind="openai_compatible",
                    base_url="http://127.0.0.1:9/v1", upstream_model="up")


class Upstream:
    """Chat chunks as the OpenAI-compatible provider reads them from the wire."""

    def __init__(self, payloads: list[str]) -> None:
        self.payloads, self.closed = payloads, False

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        translate = OpenAICompatibleProvider().stream_translator(COMPATIBLE, DIALECT.parse(BODY))
        for payload in self.payloads:
            for item in translate(payload):
                yield item

    async def aclose(self) -> None:
        self.closed = True


def relay(payloads: list[str]) -> tuple[list[Chunk], list[Any], Upstream]:
    upstream = Upstream(payloads)
    stream = DIALECT.stream(DIALECT.parse(BODY), upstream)

    async def collect() -> list[Chunk]:
        chunks = [item async for item in stream]
        await stream.aclose()
        return chunks

    chunks = async_to_sync(collect)()
    events = []
    for item in chunks:
        if item.data is None:
            continue
        data = json.loads(item.data)
        assert item.event == data["type"]  # relay_stream frames `event: <type>`
        events.append(EVENTS.validate_python(data))
    return chunks, events, upstream


def final_message(events: list[Any]) -> Any:
    snapshot, buffers = None, {}  # type: ignore[var-annotated]
    for event in events:
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    return snapshot


def test_a_text_stream_event_by_event() -> None:
    chunks, events, upstream = relay([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
                                      chunk({"content": "lo"}), chunk({}, "stop"), USAGE])
    assert [e.type for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    start = events[0].message
    assert start.id.startswith("msg_") and start.model == "my-model" and start.content == []
    assert events[1].index == 0 and events[1].content_block.type == "text"
    assert [e.delta.text for e in events[2:4]] == ["Hel", "lo"]
    assert events[5].delta.stop_reason == "end_turn"
    assert (events[5].usage.input_tokens, events[5].usage.output_tokens, events[5].usage.cache_read_input_tokens) == (20, 9, 10)
    message = final_message(events)
    assert message.content[0].text == "Hello" and message.usage.input_tokens == 20
    # The ledger: the provider's usage rides on message_delta, the delivered text on the delta events.
    assert [c.usage for c in chunks if c.usage] == [Usage(prompt_tokens=30, completion_tokens=9, cached_tokens=10)]
    assert "".join(c.text for c in chunks) == "Hello"
    assert chunks[-1].finished and chunks[-1].event == "message_stop"
    assert upstream.closed


def test_tool_calls_stream_as_tool_use_blocks_with_input_json_deltas() -> None:
    def call(index: int, arguments: str, **first: str) -> JSONDict:
        function = {"arguments": arguments, **({"name": first["name"]} if first else {})}
        item: JSONDict = {"index": index, "function": function}
        if first:
            item.update(id=first["id"], type="function")
        return {"tool_calls": [item]}

    payloads = [chunk({"role": "assistant", "content": "Checking."}),
                chunk(call(0, "", id="call_a", name="get_weather")), chunk(call(0, '{"city":')), chunk(call(0, '"Paris"}')),
                chunk(call(1, '{"city":"Rome"}', id="call_b", name="get_weather")), chunk({}, "tool_calls"), USAGE]
    _, events, _ = relay(payloads)
    assert [(e.type, getattr(e, "index", None)) for e in events] == [
        ("message_start", None), ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_stop", 2),
        ("message_delta", None), ("message_stop", None)]
    assert events[4].content_block.model_dump(exclude_none=True) == {"type": "tool_use", "id": "call_a",
                                                                     "name": "get_weather", "input": {}}
    assert [e.delta.partial_json for e in events[5:7]] == ['{"city":', '"Paris"}']
    assert events[11].delta.stop_reason == "tool_use"
    message = final_message(events)
    assert [b.input for b in message.content[1:]] == [{"city": "Paris"}, {"city": "Rome"}]
    assert [b.id for b in message.content[1:]] == ["call_a", "call_b"]


def test_interleaved_tool_call_arguments_fail_rather_than_corrupt() -> None:
    first = {"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": "{"}}]}
    second = {"tool_calls": [{"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": "{"}}]}
    late = {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}
    with pytest.raises(ProviderError) as caught:
        relay([chunk(first), chunk(second), chunk(late)])
    assert caught.value.status == 502


def test_a_stream_without_usage_reports_an_estimate_and_leaves_the_ledger_its_own() -> None:
    chunks, events, _ = relay([chunk({"role": "assistant", "content": "Hello there, friend"}), chunk({}, "length")])
    delta = events[-2]
    assert delta.type == "message_delta" and delta.delta.stop_reason == "max_tokens"
    assert delta.usage.input_tokens > 0 and delta.usage.output_tokens == 4
    assert all(c.usage is None for c in chunks)  # the row marks its own estimate as such


def test_an_empty_answer_is_still_a_complete_message() -> None:
    _, events, _ = relay([chunk({}, "stop"), USAGE])
    assert [e.type for e in events] == ["message_start", "message_delta", "message_stop"]


def test_the_in_band_error_event_is_anthropics() -> None:
    frame = DIALECT.error_event(None, ProviderError("The provider failed.", status=502, code="x", permanent=False))
    name, data = frame.decode().strip().split("\n")
    assert name == "event: error"
    event = json.loads(data.removeprefix("data: "))
    assert event == {"type": "error", "error": {"type": "api_error", "message": "The provider failed."}}
    anthropic.types.ErrorResponse.model_validate(event)


TARGET = Target(public_model="claude-public", deployment_id=1, provider_name="anthropic", kind="anthropic",
                base_url="https://api.anthropic.com", upstream_model="claude-sonnet-4-5", api_key="sk-ant")
NATIVE_EVENTS = [
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                                          "content": [], "stop_reason": None, "stop_sequence": None,
                                          "usage": {"input_tokens": 7, "cache_creation_input_tokens": 100,
                                                    "cache_read_input_tokens": 2000, "output_tokens": 1}}},
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi!"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
]


def test_native_events_pass_unchanged_but_for_the_model_and_usage_is_read() -> None:
    body = DIALECT.parse(BODY)
    translate = MessagesProvider().stream_translator(TARGET, body)
    chunks = [item for event in NATIVE_EVENTS for item in translate(json.dumps(event))]
    assert [c.event for c in chunks] == [e["type"] for e in NATIVE_EVENTS]
    sent = [json.loads(c.data or b"") for c in chunks]
    assert sent[0]["message"]["model"] == "claude-public"
    assert sent[1:] == NATIVE_EVENTS[1:]
    for event in sent:
        if event["type"] != "ping":  # the SDK skips pings before parsing events
            EVENTS.validate_python(event)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage == [Usage(prompt_tokens=2107, completion_tokens=15, cached_tokens=2000, cache_write_tokens=100)]
    assert [c.finished for c in chunks].count(True) == 1 and chunks[-1].finished
    assert "".join(c.text for c in chunks) == "Hmm.Hi!"


def test_native_error_event_and_garbage_end_the_stream_without_the_upstream_text() -> None:
    translate = MessagesProvider().stream_translator(TARGET, DIALECT.parse(BODY))
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "secret prompt text"}}
    with pytest.raises(ProviderError) as caught:
        translate(json.dumps(overloaded))
    assert caught.value.status == 529 and "secret" not in caught.value.message
    assert json.loads(DIALECT.error_event(None, caught.value).split(b"data: ")[1])["error"]["type"] == "overloaded_error"
    with pytest.raises(ProviderError):
        translate("not json")


def test_native_request_keeps_the_body_but_the_model() -> None:
    data = {**BODY, "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
            "context_management": {"edits": []}}
    request = MessagesProvider().build_request(TARGET, DIALECT.parse(data))
    assert request.url == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant" and request.headers["anthropic-version"] == "2023-06-01"
    assert request.json() == {**data, "model": "claude-sonnet-4-5"}


def test_native_whole_answer_is_renamed_and_its_usage_read() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
               "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
               "stop_reason": "tool_use", "stop_sequence": None,
               "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 6}}
    completion = MessagesProvider().parse_response(TARGET, DIALECT.parse(BODY), message)
    assert completion.payload == {**message, "model": "claude-public"}
    assert completion.usage == Usage(prompt_tokens=14, completion_tokens=4, cached_tokens=5, cache_write_tokens=6)
    assert completion.text == 'Hi{"a":1}'


def test_tool_calls_without_an_index_are_told_apart_by_their_ids() -> None:
    def whole(call_id: str, city: str) -> JSONDict:  # as some servers send them: whole, with no index
        return {"tool_calls": [{"id": call_id, "type": "function",
                                "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]}

    _, events, _ = relay([chunk(whole("call_1", "Paris")), chunk(whole("call_2", "Rome")), chunk({}, "tool_calls")])
    message = final_message(events)
    assert [(b.id, b.input) for b in message.content] == [("call_1", {"city": "Paris"}), ("call_2", {"city": "Rome"})]
