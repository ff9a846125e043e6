"""Tools on Anthropic routes: definitions, tool choice, tool calls and results, both ways, stream and not.

The answers must parse with the official openai SDK's types, as a client would read them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from proxy.errors import GatewayError
from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.base import Chunk, JSONDict

from .test_anthropic import TARGET, build, chat

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
HI = {"role": "user", "content": "Weather in Paris and Rome?"}
CALLS = [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
         {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]


def refused(data: JSONDict) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        build(data)
    assert caught.value.status == 400
    return caught.value


def test_function_tools_become_anthropic_tools() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    cached = {**WEATHER, "cache_control": {"type": "ephemeral"}}
    _, payload = build({"messages": [HI], "tools": [bare, cached]})
    assert payload["tools"] == [
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        {"name": "get_weather", "description": "Weather in a city.",
         "input_schema": WEATHER["function"]["parameters"], "cache_control": {"type": "ephemeral"}},
    ]
    assert "tool_choice" not in payload  # Anthropic's default is auto, as OpenAI's


@pytest.mark.parametrize(("tool_choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ({"type": "function", "function": {"name": "get_weather"}}, False,
     {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
    ("auto", True, {"type": "auto"}),
])
def test_tool_choice_and_parallel_tool_calls_map(tool_choice: Any, parallel: Any, expected: JSONDict) -> None:
    data: JSONDict = {"messages": [HI], "tools": [WEATHER]}
    if tool_choice is not None:
        data["tool_choice"] = tool_choice
    if parallel is not None:
        data["parallel_tool_calls"] = parallel
    _, payload = build(data)
    assert payload["tool_choice"] == expected


def test_a_conversation_with_tool_calls_and_results_alternates_as_anthropic_requires() -> None:
    _, payload = build({"messages": [
        HI,
        {"role": "assistant", "content": "Let me look.", "tool_calls": CALLS},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "21 C"}]},
        {"role": "user", "content": "And tomorrow?"},
    ], "tools": [WEATHER]})
    assert payload["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
        ]},
        # Both results, then the user's next words, in one user turn.
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "21 C"}]},
            {"type": "text", "text": "And tomorrow?"},
        ]},
    ]


def test_an_assistant_turn_of_tool_calls_only_and_empty_arguments() -> None:
    call = {"id": "toolu_9", "type": "function", "function": {"name": "now", "arguments": ""}}
    _, payload = build({"messages": [HI, {"role": "assistant", "content": None, "tool_calls": [call]},
                                     {"role": "tool", "tool_call_id": "toolu_9", "content": ""}]})
    assert payload["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_9", "name": "now", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]},
    ]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"a string"', "12"])
def test_unparsable_or_non_object_arguments_are_a_400_naming_them(arguments: str) -> None:
    call = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    error = refused({"messages": [HI, {"role": "assistant", "content": None, "tool_calls": [CALLS[0], call]}]})
    assert error.param == "messages[1].tool_calls[1].function.arguments"


@pytest.mark.parametrize(("data", "param"), [
    ({"messages": [HI], "functions": [WEATHER["function"]]}, "functions"),
    ({"messages": [HI], "function_call": "auto"}, "function_call"),
    ({"messages": [HI, {"role": "assistant", "content": None,
                        "function_call": {"name": "get_weather", "arguments": "{}"}}]}, "messages[1].function_call"),
    ({"messages": [HI, {"role": "function", "name": "get_weather", "content": "18 C"}]}, "messages[1].role"),
    ({"messages": [HI], "tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [HI], "tool_choice": "required"}, "tool_choice"),
    ({"messages": [HI], "tools": [{"type": "function", "function": {"description": "no name"}}]},
     "tools[0].function.name"),
    ({"messages": [HI], "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
     "tools[0].function.parameters"),
    ({"messages": [HI], "tools": [{**WEATHER, "cache_control": "yes"}]}, "tools[0].cache_control"),
    ({"messages": [HI], "n": 3}, "n"),
])
def test_what_cannot_be_translated_is_a_400_naming_the_param(data: JSONDict, param: str) -> None:
    assert refused(data).param == param


def test_text_response_format_and_n_of_one_are_accepted() -> None:
    _, payload = build({"messages": [HI], "response_format": {"type": "text"}, "n": 1})
    assert "response_format" not in payload and "n" not in payload


def message(*blocks: JSONDict, stop_reason: str = "tool_use") -> JSONDict:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": list(blocks), "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 50, "output_tokens": 20}}


def test_tool_use_blocks_become_tool_calls_in_a_valid_chat_completion() -> None:
    data = message({"type": "text", "text": "Checking."},
                   {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                   {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Zürich"}})
    completion = AnthropicProvider().parse_response(TARGET, chat({}, stream=False), data)
    parsed = ChatCompletion.model_validate(completion.payload)
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    calls = choice.message.tool_calls or []
    assert [(c.id, c.type, c.function.name) for c in calls] == [("toolu_1", "function", "get_weather"),
                                                                ("toolu_2", "function", "get_weather")]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Zürich"}]
    assert completion.text.startswith("Checking.") and "Zürich" in completion.text  # arguments count when estimating


def test_tool_calls_with_no_text_have_null_content() -> None:
    data = message({"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}})
    payload = AnthropicProvider().parse_response(TARGET, chat({}, stream=False), data).payload
    assert payload["choices"][0]["message"] == {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}]}
    ChatCompletion.model_validate(payload)


TOOL_STREAM = [
    {"type": "message_start", "message": {"id": "msg_t", "type": "message", "role": "assistant", "content": [],
                                          "usage": {"input_tokens": 40, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Looking."}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "thinking", "thinking": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "thinking_delta", "thinking": "secret"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "signature_delta", "signature": "sig"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2,
     "content_block": {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
    {"type": "content_block_stop", "index": 2},
    {"type": "content_block_start", "index": 3,
     "content_block": {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": '{"city":"Rome"}'}},
    {"type": "content_block_stop", "index": 3},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 33}},
    {"type": "message_stop"},
]


def streamed(events: list[JSONDict]) -> list[Chunk]:
    translate = AnthropicProvider().stream_translator(TARGET, chat({}))
    return [chunk for event in events for chunk in translate(json.dumps(event))]


def test_a_streamed_tool_call_becomes_tool_call_deltas_indexed_per_call() -> None:
    chunks = streamed(TOOL_STREAM)
    parsed = [ChatCompletionChunk.model_validate_json(c.data or b"") for c in chunks]
    assert all(p.id == "msg_t" and p.model == "claude" for p in parsed)
    deltas = [p.choices[0].delta for p in parsed if p.choices]
    assert "".join(d.content or "" for d in deltas) == "Looking."
    assert "secret" not in b"".join(c.data or b"" for c in chunks).decode()  # thinking is not forwarded on chat
    # Assemble the calls as the SDK's stream helpers do: by index, the id and name first, then argument pieces.
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for call in delta.tool_calls or []:
            state = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            state["id"] += call.id or ""
            assert call.function is not None
            state["name"] += call.function.name or ""
            state["arguments"] += call.function.arguments or ""
    assert calls == {0: {"id": "toolu_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                     1: {"id": "toolu_b", "name": "get_weather", "arguments": '{"city":"Rome"}'}}
    finish, usage = chunks[-2:]
    assert finish.finished and parsed[-2].choices[0].finish_reason == "tool_calls"
    assert usage.usage is not None and (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (40, 33)
    # What was generated (text and arguments) is kept for a token estimate should usage never come.
    assert "".join(c.text for c in chunks).endswith('{"city": "Paris"}get_weather{"city":"Rome"}')


def test_the_first_delta_of_a_tool_call_carries_its_id_name_and_type() -> None:
    chunks = streamed(TOOL_STREAM[:9])
    first = json.loads(chunks[-1].data or b"")["choices"][0]["delta"]
    assert first == {"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function",
                                     "function": {"name": "get_weather", "arguments": ""}}]}


@pytest.mark.parametrize("extra", [{"tools": [WEATHER]}, {"response_format": {"type": "json_object"}}])
def test_the_worst_case_held_for_claude_counts_its_tool_system_prompt(extra: JSONDict) -> None:
    from proxy import sizing

    def added(model: str) -> int:
        return (sizing.worst_case(chat({"messages": [HI], **extra}), model).prompt_tokens
                - sizing.worst_case(chat({"messages": [HI]}), model).prompt_tokens)

    # The same definitions cost 530 tokens more on Claude: the system prompt Anthropic adds and bills for tools.
    assert added("claude-sonnet-4-5") == added("gpt-4o") + sizing.CLAUDE_TOOL_PROMPT
    assert added("anthropic.claude-3-opus-20240229-v1:0") == added("gpt-4o") + 530  # Bedrock's names too
