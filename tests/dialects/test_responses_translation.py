"""Responses requests as Chat Completions requests, and chat answers as Response objects the openai SDK accepts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from openai.types.responses import Response

from proxy.dialects.responses import DIALECT
from proxy.errors import GatewayError
from proxy.providers.base import ApiRequest, Completion, JSONDict, Usage

TOOL = {"type": "function", "name": "weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": True}
CHAT_TOOL = {"type": "function", "function": {"name": "weather", "description": "Weather for a city",
                                              "parameters": TOOL["parameters"], "strict": True}}


def body(**fields: Any) -> ApiRequest:
    return DIALECT.parse({"model": "demo", "input": "Hi", **fields})


def chat_of(**fields: Any) -> JSONDict:
    form = DIALECT.to_chat(body(**fields))
    assert "refusal" not in form.state, form.state
    return form.data


def refusal_of(**fields: Any) -> GatewayError:
    form = DIALECT.to_chat(body(**fields))
    error = form.state["refusal"]
    assert isinstance(error, GatewayError) and error.status == 400
    return error


@pytest.mark.parametrize(("items", "messages"), [
    ("Hello", [{"role": "user", "content": "Hello"}]),
    ([{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Hello"}]),
    ([{"type": "message", "role": "developer", "content": "Be brief."}], [{"role": "system", "content": "Be brief."}]),
    ([{"role": "user", "content": [{"type": "input_text", "text": "Look:"},
                                   {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"}]}],
     [{"role": "user", "content": [{"type": "text", "text": "Look:"},
                                   {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}]}]),
    ([{"role": "assistant", "content": [{"type": "output_text", "text": "Hi there."}]}],
     [{"role": "assistant", "content": "Hi there."}]),
    # The text before the calls and the consecutive calls make one assistant message; reasoning is dropped.
    ([{"type": "reasoning", "id": "rs_1", "summary": []},
      {"role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
      {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Oslo"}'},
      {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": '{"city":"Rome"}'},
      {"type": "function_call_output", "call_id": "call_1", "output": "Rain"},
      {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "Sun"}]}],
     [{"role": "assistant", "content": "Checking.", "tool_calls": [
         {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
         {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "Rain"},
      {"role": "tool", "tool_call_id": "call_2", "content": "Sun"}]),
    ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}],
     [{"role": "assistant", "content": None, "tool_calls": [
         {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]),
], ids=["string", "easy-message", "developer", "image", "assistant-text", "calls-and-outputs", "lone-call"])
def test_input_items_become_chat_messages(items: Any, messages: list[JSONDict]) -> None:
    assert chat_of(input=items)["messages"] == messages


def test_instructions_come_first_then_history_then_this_turn() -> None:
    request = body(instructions="Answer in French.", input="And now?", previous_response_id="resp_1")
    request.state["history"] = [{"role": "user", "content": "First question"},
                                {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                                 "content": [{"type": "output_text", "text": "First answer", "annotations": []}]}]
    assert DIALECT.to_chat(request).data["messages"] == [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"}, {"role": "user", "content": "And now?"},
    ]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", "auto"), ("none", "none"), ("required", "required"),
    ({"type": "function", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
])
def test_function_tools_are_nested_and_tool_choice_follows(choice: Any, expected: Any) -> None:
    chat = chat_of(tools=[TOOL], tool_choice=choice, parallel_tool_calls=False)
    assert chat["tools"] == [CHAT_TOOL] and chat["tool_choice"] == expected and chat["parallel_tool_calls"] is False


def test_tool_options_without_tools_are_left_out() -> None:
    chat = chat_of(tool_choice="auto", parallel_tool_calls=True)
    assert "tool_choice" not in chat and "parallel_tool_calls" not in chat and "tools" not in chat


def test_allowed_tools_keep_only_the_tools_named() -> None:
    other = {**TOOL, "name": "time"}
    chat = chat_of(tools=[TOOL, other], tool_choice={"type": "allowed_tools", "mode": "required",
                                                     "tools": [{"type": "function", "name": "time"}]})
    assert [tool["function"]["name"] for tool in chat["tools"]] == ["time"] and chat["tool_choice"] == "required"


@pytest.mark.parametrize(("text", "expected"), [
    ({"format": {"type": "text"}}, None),
    ({"format": {"type": "json_object"}}, {"type": "json_object"}),
    ({"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}},
     {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True}}),
])
def test_text_formats_become_response_formats(text: JSONDict, expected: JSONDict | None) -> None:
    assert chat_of(text=text).get("response_format") == expected


def test_sampling_limits_and_streaming_carry_over() -> None:
    chat = chat_of(max_output_tokens=50, temperature=0.2, top_p=0.5, user="u1", reasoning={"effort": "low"},
                   stream=True, metadata={"a": "b"}, store=False)
    assert chat == {"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 50,
                    "temperature": 0.2, "top_p": 0.5, "user": "u1", "reasoning_effort": "low", "stream": True,
                    "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(("fields", "param", "named"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "web_search"),
    ({"tools": [TOOL, {"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[1].type", "file_search"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "web_search_preview"),
    ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "input[0].type", "computer_call_output"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "item_reference"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]}, "input[0].content[0]",
     "input_file"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]}, "input[0].content[0]",
     "file_id"),
])
def test_what_chat_cannot_carry_is_refused_by_name(fields: JSONDict, param: str, named: str) -> None:
    error = refusal_of(**fields)
    assert error.param == param and named in error.message and "Responses API" in error.message


def test_a_refused_item_still_counts_for_the_budget_gate() -> None:
    # A native route serves it: the hold must include it, so the chat form keeps a stand-in with its text.
    form = DIALECT.to_chat(body(input=[{"type": "computer_call_output", "call_id": "c", "output": {"note": "x" * 500}}]))
    assert any("x" * 500 in text for text in form.prompt_texts())


def chat_answer(message: JSONDict, finish: str = "stop", usage: JSONDict | None = None) -> Completion:
    raw_usage = usage or {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
                          "prompt_tokens_details": {"cached_tokens": 4}}
    payload = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "upstream-name",
               "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
               "usage": raw_usage}
    return Completion(payload=payload, usage=Usage(prompt_tokens=12, completion_tokens=5, cached_tokens=4), text="x")


def test_a_chat_answer_becomes_a_response_the_sdk_accepts() -> None:
    request = body(instructions="Be kind.", tools=[TOOL], metadata={"k": "v"}, temperature=0.3)
    request.state["response_id"] = "resp_" + "a" * 48
    answer = DIALECT.completion(request, chat_answer({"content": "It rains.", "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]},
        finish="tool_calls"))
    response = Response.model_validate(answer.payload)
    assert response.id == "resp_" + "a" * 48 and response.model == "demo" and response.status == "completed"
    assert response.output_text == "It rains."
    call = response.output[1]
    assert (call.type, call.call_id, call.name, call.arguments) == ("function_call", "call_9", "weather", '{"city":"Oslo"}')
    assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens,
                                           response.usage.input_tokens_details.cached_tokens) == (12, 5, 4)
    assert response.instructions == "Be kind." and response.metadata == {"k": "v"} and response.temperature == 0.3
    assert answer.usage == Usage(prompt_tokens=12, completion_tokens=5, cached_tokens=4)


def test_a_truncated_answer_is_incomplete_for_max_output_tokens() -> None:
    answer = DIALECT.completion(body(max_output_tokens=5), chat_answer({"content": "It rai"}, finish="length"))
    response = Response.model_validate(answer.payload)
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_reasoning_and_refusals_from_chat_providers_are_kept() -> None:
    answer = DIALECT.completion(body(), chat_answer({"content": None, "refusal": "I cannot help with that.",
                                                     "reasoning_content": "The user asks for..."}))
    response = Response.model_validate(answer.payload)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "The user asks for..."
    assert response.output[1].content[-1].refusal == "I cannot help with that."


def test_a_long_stored_conversation_makes_the_request_large(monkeypatch: pytest.MonkeyPatch) -> None:
    # Large requests are translated, sized and encoded in worker threads: the stored turns count toward that.
    from accounts.keys import Caller
    from proxy import responses_store

    turns = [{"role": "user", "content": "word " * 20_000}] * 4

    async def history(caller: Caller, previous_response_id: str) -> list[JSONDict]:
        return turns if previous_response_id == "resp_long" else []

    monkeypatch.setattr(responses_store, "history", history)
    caller = Caller(key_id=1, key_prefix="p", tenant_id=1, tenant_slug="t", allowed_models=())
    long, short = body(previous_response_id="resp_long"), body(previous_response_id="resp_short")
    for request in (long, short):
        asyncio.run(DIALECT.prepare(request, caller))
    assert long.is_large and not short.is_large and long.state["history"] == turns
    assert long.state["tenant_id"] == 1 and long.state["store"] is True and long.state["response_id"].startswith("resp_")


@pytest.mark.parametrize(("chat", "param"), [
    ("response_format", "text.format"), ("response_format.json_schema", "text.format"),
    ("max_completion_tokens", "max_output_tokens"), ("messages[3].content", "input"), ("tools[0].type", "tools[0].type"),
    ("input[2].role", "input[2].role"), (None, None),
])
def test_errors_name_the_parameter_the_client_sent(chat: str | None, param: str | None) -> None:
    response = DIALECT.error_response(GatewayError("The provider cannot do that.", param=chat))
    assert response.status_code == 400 and json.loads(response.content)["error"]["param"] == param
