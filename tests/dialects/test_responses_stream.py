"""A Chat Completions stream as the Responses API's events: each one valid for the openai SDK, the SDK's own stream
accumulator rebuilding the answer from them, usage on the final event, the response stored before it goes out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from proxy import responses_store
from proxy.dialects.responses import DIALECT
from proxy.errors import ProviderError
from proxy.providers.base import ApiRequest, Chunk, JSONDict, Usage

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


class ChatStream:
    """Stands in for an opened chat upstream: the given chat chunks, then maybe a failure."""

    def __init__(self, chunks: list[JSONDict], usage: Usage | None = None, fail: bool = False) -> None:
        self.chunks, self.usage, self.fail, self.closed = chunks, usage, fail, False

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        for chunk in self.chunks:
            yield Chunk(data=json.dumps(chunk).encode(), finished=bool(chunk["choices"][0].get("finish_reason")))
        if self.usage is not None:
            yield Chunk(data=b'{"choices":[],"usage":{}}', usage=self.usage, usage_only=True)
        if self.fail:
            raise ProviderError("cut", status=502, code="upstream_cut", permanent=False)

    async def aclose(self) -> None:
        self.closed = True


def delta(finish: str | None = None, **fields: Any) -> JSONDict:
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


TEXT = [delta(role="assistant", content=""), delta(content="Hel"), delta(content="lo."), delta(finish="stop")]
CALLS = [
    delta(role="assistant", content="Let me check."),
    delta(tool_calls=[{"index": 0, "id": "call_a", "type": "function", "function": {"name": "weather", "arguments": ""}}]),
    delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city":'}}]),
    delta(tool_calls=[{"index": 0, "function": {"arguments": '"Oslo"}'}}]),
    delta(tool_calls=[{"index": 1, "id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}}]),
    delta(finish="tool_calls"),
]


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[JSONDict]:
    kept: list[JSONDict] = []

    async def save(body: ApiRequest, response: JSONDict) -> None:
        kept.append(response)

    monkeypatch.setattr(responses_store, "save", save)
    return kept


def run(upstream: ChatStream, **fields: Any) -> tuple[ApiRequest, list[Chunk]]:
    body = DIALECT.parse({"model": "gpt-client", "input": "Hi", "stream": True, **fields})
    body.state["response_id"] = "resp_" + "b" * 48

    async def collect() -> list[Chunk]:
        stream = DIALECT.stream(body, upstream)
        try:
            return [chunk async for chunk in stream]
        finally:
            await stream.aclose()

    return body, asyncio.run(collect())


def events_of(chunks: list[Chunk]) -> list[Any]:
    """Each event validated as the SDK's type; its SSE name is its type."""
    events = []
    for chunk in chunks:
        if chunk.data is None:
            continue
        event = EVENTS.validate_python(json.loads(chunk.data))
        assert chunk.event == event.type
        events.append(event)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    return events


def accumulate(events: list[Any]) -> Any:
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(event)
    return state._completed_response


def test_text_arrives_as_semantic_events_and_ends_with_the_whole_response(saved: list[JSONDict]) -> None:
    upstream = ChatStream(TEXT, usage=Usage(prompt_tokens=9, completion_tokens=3, cached_tokens=2))
    body, chunks = run(upstream)
    events = events_of(chunks)
    assert [event.type for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[0].response.status == "in_progress" and events[0].response.model == "gpt-client"
    completed = events[-1].response
    assert completed.id == "resp_" + "b" * 48 and completed.output_text == "Hello." and completed.status == "completed"
    assert (completed.usage.input_tokens, completed.usage.output_tokens,
            completed.usage.input_tokens_details.cached_tokens) == (9, 3, 2)
    # The usage reaches the meter as soon as the provider sends it, and the last event ends the stream.
    assert [chunk.usage for chunk in chunks if chunk.usage] == [Usage(prompt_tokens=9, completion_tokens=3, cached_tokens=2)]
    assert chunks[-1].finished and upstream.closed
    assert "".join(chunk.text for chunk in chunks) == "Hello."
    assert saved == [json.loads(chunks[-1].data or b"")["response"]]  # stored, then sent
    assert accumulate(events).output_text == "Hello."


def test_tool_calls_stream_as_function_call_items(saved: list[JSONDict]) -> None:
    _, chunks = run(ChatStream(CALLS, usage=Usage(prompt_tokens=20, completion_tokens=15)), tools=[
        {"type": "function", "name": "weather"}, {"type": "function", "name": "time"}])
    events = events_of(chunks)
    kinds = [event.type for event in events]
    assert kinds.count("response.output_item.added") == 3 and kinds.count("response.output_item.done") == 3
    assert [event.delta for event in events if event.type == "response.function_call_arguments.delta"] == [
        '{"city":', '"Oslo"}', "{}"]
    done = [event for event in events if event.type == "response.function_call_arguments.done"]
    assert [(event.arguments, event.output_index) for event in done] == [('{"city":"Oslo"}', 1), ("{}", 2)]
    final = accumulate(events)
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    assert [(item.call_id, item.name, item.arguments) for item in final.output[1:]] == [
        ("call_a", "weather", '{"city":"Oslo"}'), ("call_b", "time", "{}")]
    assert saved[0]["output"][1]["call_id"] == "call_a"


def test_a_provider_without_usage_gets_an_estimate_on_the_final_event(saved: list[JSONDict]) -> None:
    _, chunks = run(ChatStream(TEXT))
    final = events_of(chunks)[-1]
    assert final.type == "response.completed" and final.response.usage.output_tokens > 0
    assert final.response.usage.input_tokens > 0
    # The ledger counts it the same way, marked as an estimate: no chunk claims provider usage.
    assert all(chunk.usage is None for chunk in chunks)


def test_a_truncated_stream_ends_incomplete(saved: list[JSONDict]) -> None:
    _, chunks = run(ChatStream([delta(content="Hel"), delta(finish="length")], usage=Usage(3, 1)), max_output_tokens=1)
    final = events_of(chunks)[-1]
    assert final.type == "response.incomplete" and final.response.incomplete_details.reason == "max_output_tokens"
    assert chunks[-1].finished and saved[0]["status"] == "incomplete"


def test_reasoning_deltas_become_a_reasoning_item(saved: list[JSONDict]) -> None:
    _, chunks = run(ChatStream([delta(reasoning_content="Think"), delta(reasoning_content="ing."), delta(content="42"),
                                delta(finish="stop")], usage=Usage(3, 5)))
    events = events_of(chunks)
    assert [event.delta for event in events if event.type == "response.reasoning_text.delta"] == ["Think", "ing."]
    final = accumulate(events)
    assert [item.type for item in final.output] == ["reasoning", "message"] and final.output_text == "42"


def test_an_error_mid_stream_is_an_error_event_then_response_failed(saved: list[JSONDict]) -> None:
    body, chunks = run(ChatStream(TEXT[:2]))
    events_of(chunks)  # what went out before the failure is well formed
    frames = DIALECT.error_event(body, ProviderError("The provider closed the connection.", status=502,
                                                     code="upstream_cut", permanent=False))
    sent = [json.loads(line[6:]) for line in frames.decode().splitlines() if line.startswith("data: ")]
    error, failed = (EVENTS.validate_python(data) for data in sent)
    assert (error.type, error.code, error.message) == ("error", "upstream_cut", "The provider closed the connection.")
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error.code == "server_error" and failed.response.id == body.state["response_id"]
    last = json.loads(chunks[-1].data or b"")["sequence_number"]
    assert (error.sequence_number, failed.sequence_number) == (last + 1, last + 2)
    assert b"event: error\n" in frames and b"event: response.failed\n" in frames


def test_an_error_before_anything_was_sent_is_one_error_event() -> None:
    body = DIALECT.parse({"model": "m", "input": "Hi", "stream": True})
    frames = DIALECT.error_event(body, ProviderError("Rate limited.", status=429, code="rate_limited", permanent=False))
    assert frames.count(b"event: ") == 1
    EVENTS.validate_python(json.loads(frames.split(b"data: ", 1)[1]))


def test_calls_without_an_index_are_told_apart_by_their_ids(saved: list[JSONDict]) -> None:
    calls = [delta(tool_calls=[{"id": "call_1", "function": {"name": "a", "arguments": '{"x":'}}]),
             delta(tool_calls=[{"function": {"arguments": "1}"}}]),
             delta(tool_calls=[{"id": "call_2", "function": {"name": "b", "arguments": "{}"}}]), delta(finish="tool_calls")]
    final = accumulate(events_of(run(ChatStream(calls, usage=Usage(1, 1)))[1]))
    assert [(item.call_id, item.name, item.arguments) for item in final.output] == [
        ("call_1", "a", '{"x":1}'), ("call_2", "b", "{}")]
