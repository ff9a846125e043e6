"""A Messages request as a Chat Completions request, and a chat answer back as an Anthropic message, checked
against the official anthropic SDK's own types."""

from __future__ import annotations

import json
from typing import Any

import anthropic.types
import pytest

from proxy import dialects
from proxy.dialects.messages import DIALECT
from proxy.providers.base import Completion, JSONDict, Usage

IMAGE = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def chat_of(**fields: Any) -> JSONDict:
    data = {"model": "demo", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}], **fields}
    body = DIALECT.parse(data)
    return dialects.chat_form(body).data


def test_system_string_and_text_blocks_become_one_system_message() -> None:
    assert chat_of(system="Be brief.")["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Be kind."}]
    assert chat_of(system=blocks)["messages"][:2] == [{"role": "system", "content": "Be brief.\n\nBe kind."},
                                                      {"role": "user", "content": "Hi"}]


def test_text_and_images_become_content_parts() -> None:
    content = [{"type": "text", "text": "What is this?"}, {"type": "image", "source": IMAGE},
               {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]
    chat = chat_of(messages=[{"role": "user", "content": content}])
    assert chat["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]


def test_tool_use_and_tool_results_become_tool_calls_and_tool_messages() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two cities.", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": False,
             "content": [{"type": "text", "text": "Rain"}, {"type": "image", "source": IMAGE}]},
            {"type": "text", "text": "Summarise."},
        ]},
    ]
    chat = chat_of(messages=messages, tools=[WEATHER])
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [  # the thinking block is dropped
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Rain"},
        # A chat tool message holds text only: the result's image follows in the user turn.
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                                     {"type": "text", "text": "Summarise."}]},
    ]
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": "The weather in a city."}}]


def test_an_assistant_turn_of_tool_calls_only_has_null_content() -> None:
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]
    chat = chat_of(messages=messages, tools=[WEATHER])
    assert chat["messages"][1]["content"] is None
    assert chat["messages"][2] == {"role": "tool", "tool_call_id": "t", "content": ""}
    assert len(chat["messages"]) == 3  # no empty user message after the tool result


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice(choice: JSONDict, expected: Any) -> None:
    assert chat_of(tools=[WEATHER], tool_choice=choice)["tool_choice"] == expected


def test_disabling_parallel_tool_use() -> None:
    chat = chat_of(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert chat["parallel_tool_calls"] is False


def test_options_stop_sequences_user_and_stream() -> None:
    chat = chat_of(stop_sequences=["END", "\n\n"], temperature=0.5, top_p=0.9, top_k=40, metadata={"user_id": "u-42"},
                   stream=True, thinking={"type": "enabled", "budget_tokens": 2000}, service_tier="auto")
    assert chat == {"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100,
                    "temperature": 0.5, "top_p": 0.9, "stop": ["END", "\n\n"], "user": "u-42", "stream": True,
                    "stream_options": {"include_usage": True}}  # top_k, thinking and unknown fields are left out
    assert "stream" not in chat_of()


def test_documents_and_search_results_become_parts() -> None:
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
           "title": "report.pdf"}
    note = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Plain notes."}}
    found = {"type": "search_result", "source": "https://example.com", "title": "T",
             "content": [{"type": "text", "text": "found"}]}
    body = DIALECT.parse({"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": [pdf, note, found]}]})
    chat = dialects.chat_form(body)
    assert chat.data["messages"][0]["content"] == [
        {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        {"type": "text", "text": "Plain notes."}, {"type": "text", "text": "found"}]
    assert "refusal" not in chat.state


SERVER_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}


@pytest.mark.parametrize(("fields", "param", "kept"), [
    ({"tools": [WEATHER, SERVER_TOOL]}, "tools[1].type", None),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Look:"}, {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]},
     "messages[0].content[1].source", "file_1"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}}]}]},
     "messages[1].content[0].type", "srvtoolu_1"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}]}]}]},
     "messages[0].content[0].content[0].source", "https://example.com/a.pdf"),
])
def test_what_chat_cannot_carry_is_a_refusal_noted_for_translated_routes(fields: JSONDict, param: str,
                                                                        kept: str | None) -> None:
    body = DIALECT.parse({"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}], **fields})
    chat = dialects.chat_form(body)  # never raises: an Anthropic deployment takes the request as it is
    refusal = chat.state["refusal"]
    assert (refusal.status, refusal.param, refusal.code) == (400, param, "unsupported_on_route")
    if kept is not None:  # the budget gate sizes the untranslated block by its text
        assert kept in "".join(body.prompt_texts())
    else:  # and the server tool's definition, with the others
        assert chat.data["tools"][1] == SERVER_TOOL


def answer(message: JSONDict, finish: str | None = "stop", usage: Usage | None = None) -> JSONDict:
    payload = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "upstream-name",
               "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    body = DIALECT.parse({"model": "my-claude", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]})
    text = message.get("content") or ""
    result = DIALECT.completion(body, Completion(payload=payload, usage=usage or Usage(12, 5), text=text))
    assert result.usage is usage or usage is None
    anthropic.types.Message.model_validate(result.payload)  # the SDK's own parser accepts it
    return result.payload


def test_a_text_answer_becomes_a_message() -> None:
    message = answer({"role": "assistant", "content": "Hello!"}, usage=Usage(prompt_tokens=12, completion_tokens=5))
    assert message["id"].startswith("msg_") and len(message["id"]) == 28
    assert {k: v for k, v in message.items() if k != "id"} == {
        "type": "message", "role": "assistant", "model": "my-claude", "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


def test_tool_calls_become_tool_use_blocks() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Ro'}}]
    message = answer({"role": "assistant", "content": "Let me look.", "tool_calls": calls}, finish="tool_calls")
    assert message["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        # Arguments that are not a JSON object become {}: Anthropic's input must be one.
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(("finish", "reason"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal"),
    (None, "end_turn"),
])
def test_stop_reasons(finish: str | None, reason: str) -> None:
    assert answer({"role": "assistant", "content": "x"}, finish=finish)["stop_reason"] == reason


def test_cached_prompt_tokens_are_reported_apart() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=20, cached_tokens=600, cache_write_tokens=300)
    message = answer({"role": "assistant", "content": "x"}, usage=usage)
    assert message["usage"] == {"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 300,
                                "cache_read_input_tokens": 600}


def test_an_answer_without_usage_reports_an_estimate_and_leaves_the_ledger_its_own() -> None:
    payload = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "One two three four"},
                            "finish_reason": "stop"}]}
    body = DIALECT.parse({"model": "demo", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi " * 40}]})
    result = DIALECT.completion(body, Completion(payload=payload, usage=None, text="One two three four"))
    assert result.usage is None and result.text == "One two three four"  # the ledger row is marked estimated
    usage = result.payload["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    anthropic.types.Message.model_validate(result.payload)
