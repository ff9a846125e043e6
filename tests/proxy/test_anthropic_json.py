"""JSON response formats on Anthropic routes: asked for through a forced tool, answered as JSON content."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from proxy.errors import GatewayError
from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.base import JSONDict

from .test_anthropic import TARGET, build, chat

HI = {"role": "user", "content": "Name a city and its country."}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
          "required": ["city", "country"], "additionalProperties": False}
CITY = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}


def test_a_json_schema_becomes_a_forced_tool() -> None:
    _, payload = build({"messages": [HI], "response_format": CITY})
    assert payload["tools"] == [{"name": "city", "description": "Give your answer as this tool's input.",
                                 "input_schema": SCHEMA}]
    assert payload["tool_choice"] == {"type": "tool", "name": "city"}
    assert "response_format" not in payload


def test_json_object_becomes_a_forced_tool_taking_any_object() -> None:
    _, payload = build({"messages": [HI], "response_format": {"type": "json_object"}})
    assert payload["tools"][0]["input_schema"] == {"type": "object"}
    assert payload["tool_choice"] == {"type": "tool", "name": "json_answer"}


@pytest.mark.parametrize(("data", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}, "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": CITY, "tools": [{"type": "function", "function": {"name": "f"}}]}, "response_format"),
])
def test_json_formats_that_cannot_be_asked_for_are_a_400_naming_the_param(data: JSONDict, param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        build({"messages": [HI], **data})
    assert (caught.value.status, caught.value.param) == (400, param)


def test_the_forced_tools_input_is_the_answer_content() -> None:
    data = {"id": "msg_j", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "tool_use", "id": "toolu_j", "name": "city",
                         "input": {"city": "Kraków", "country": "Poland"}}],
            "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 12}}
    completion = AnthropicProvider().parse_response(TARGET, chat({"response_format": CITY}, stream=False), data)
    parsed = ChatCompletion.model_validate(completion.payload)
    choice = parsed.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert json.loads(choice.message.content or "") == {"city": "Kraków", "country": "Poland"}
    assert completion.text == choice.message.content


def test_a_streamed_json_answer_is_streamed_as_content() -> None:
    translate = AnthropicProvider().stream_translator(TARGET, chat({"response_format": CITY}))
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_j", "usage": {"input_tokens": 30, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "toolu_j", "name": "city", "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Kr'}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "input_json_delta", "partial_json": 'aków", "country": "Poland"}'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
    ]
    chunks = [chunk for event in events for chunk in translate(json.dumps(event))]
    parsed = [ChatCompletionChunk.model_validate_json(c.data or b"") for c in chunks]
    deltas = [p.choices[0].delta for p in parsed if p.choices]
    assert all(d.tool_calls is None for d in deltas)
    assert json.loads("".join(d.content or "" for d in deltas)) == {"city": "Kraków", "country": "Poland"}
    assert parsed[-2].choices[0].finish_reason == "stop"


def test_a_client_tool_named_like_a_schema_is_still_a_tool_call_without_a_json_format() -> None:
    data = {"id": "msg_t", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "tool_use", "id": "toolu_t", "name": "city", "input": {}}],
            "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 2}}
    payload = AnthropicProvider().parse_response(TARGET, chat({}, stream=False), data).payload
    assert payload["choices"][0]["finish_reason"] == "tool_calls"
    assert payload["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "city"


def test_a_json_answer_cut_short_by_max_tokens_says_length() -> None:
    data = {"id": "msg_l", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "tool_use", "id": "toolu_l", "name": "city", "input": {"city": "Kr"}}],
            "stop_reason": "max_tokens", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 2}}
    payload = AnthropicProvider().parse_response(TARGET, chat({"response_format": CITY}, stream=False), data).payload
    assert payload["choices"][0]["finish_reason"] == "length"
