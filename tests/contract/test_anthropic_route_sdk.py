"""Chat completions and Responses requests to an Anthropic deployment (fakellm's /v1/messages), with the official
OpenAI Python SDK: translated chat → Anthropic Messages, tools and tool results included, and the answer back.
"""

from __future__ import annotations

import json

import pytest

from ..conftest import Party
from .conftest import (IMAGE_ANSWER, RED_PIXEL_PNG, WEATHER_ANSWER, WEATHER_SCHEMA, WEATHER_TOOL_RESULT, FakeLLM,
                       Row, check_ledger, text_of, tool_calls_of)
from .responses_checks import WEATHER_FUNCTION, check_stream, function_call, openai_sdk, strict, usage_pair

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see committed rows

CHAT_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now.",
                                              "parameters": WEATHER_SCHEMA}}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "The weather in a city now.", "input_schema": WEATHER_SCHEMA}


def check_tool_result_sent(request: dict[str, object], call_id: str) -> None:
    """The second turn reached Anthropic as Anthropic expects: a tool_use block, then a tool_result block."""
    messages = request["messages"]
    assert isinstance(messages, list)
    [use] = [b for b in messages[-2]["content"] if b["type"] == "tool_use"]
    assert (messages[-2]["role"], use["id"], use["name"], use["input"]) == ("assistant", call_id, "get_weather",
                                                                            {"city": "Paris"})
    [result] = [b for b in messages[-1]["content"] if b["type"] == "tool_result"]
    assert messages[-1]["role"] == "user" and result["tool_use_id"] == call_id
    content = result["content"]
    assert content == WEATHER_TOOL_RESULT or content == [{"type": "text", "text": WEATHER_TOOL_RESULT}]


def test_chat_tool_round_trip_and_image(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM) -> None:
    client = openai_sdk(live_server_url, alice)
    first = client.chat.completions.create(model="fake-claude", messages=[QUESTION], tools=[CHAT_TOOL])
    assert first.model == "fake-claude" and first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    sent = fakellm.exchanges()[0]
    assert sent.path == "/v1/messages" and sent.request["tools"] == [ANTHROPIC_TOOL]
    assert call.id == tool_calls_of(sent)[0]["id"]

    second = client.chat.completions.create(model="fake-claude", tools=[CHAT_TOOL], messages=[
        QUESTION, first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": WEATHER_TOOL_RESULT}])
    assert second.choices[0].message.content == WEATHER_ANSWER and second.choices[0].finish_reason == "stop"
    check_tool_result_sent(fakellm.exchanges()[1].request, call.id)

    picture = client.chat.completions.create(model="fake-claude", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{RED_PIXEL_PNG}"}},
        {"type": "text", "text": "Please describe the picture."}]}])
    assert picture.choices[0].message.content == IMAGE_ANSWER
    [image] = [b for b in fakellm.exchanges()[2].request["messages"][0]["content"] if b["type"] == "image"]
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": RED_PIXEL_PNG}

    upstream = [exchange.usage() for exchange in fakellm.exchanges()]
    assert [(c.usage.prompt_tokens, c.usage.completion_tokens) for c in (first, second, picture)] == upstream
    check_ledger(alice, Row("chat", "fake-claude", False, upstream[0]), Row("chat", "fake-claude", False, upstream[1]),
                 Row("chat", "fake-claude", False, upstream[2], images=1))
    strict(first, second, picture)


def test_chat_streamed_tool_call(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM) -> None:
    client = openai_sdk(live_server_url, alice)
    chunks = list(client.chat.completions.create(model="fake-claude", messages=[QUESTION], tools=[CHAT_TOOL],
                                                 stream=True, stream_options={"include_usage": True}))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and all(d.index == 0 for d in deltas)
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert deltas[0].id == tool_calls_of(fakellm.exchanges()[0])[0]["id"]
    assert {c.model for c in chunks} == {"fake-claude"} and len({c.id for c in chunks}) == 1

    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == fakellm.exchanges()[0].usage()
    check_ledger(alice, Row("chat", "fake-claude", True, fakellm.exchanges()[0].usage()))
    strict(*chunks)


def test_responses_tool_round_trip(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM) -> None:
    client = openai_sdk(live_server_url, alice)
    first = client.responses.create(model="fake-claude", input="What is the weather in Paris?",
                                    tools=[WEATHER_FUNCTION],
                                    instructions="Use the tools.")
    call = function_call(first)
    sent = fakellm.exchanges()[0]
    assert sent.path == "/v1/messages" and call.call_id == tool_calls_of(sent)[0]["id"]
    assert sent.request["model"] == "fakellm-claude" and sent.request["tools"][0]["name"] == "get_weather"
    assert sent.request["tools"][0]["input_schema"] == WEATHER_FUNCTION["parameters"]
    system = sent.request["system"]
    assert system == "Use the tools." or [b["text"] for b in system] == ["Use the tools."]

    second = client.responses.create(model="fake-claude", previous_response_id=first.id, tools=[WEATHER_FUNCTION],
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": WEATHER_TOOL_RESULT}])
    assert second.output_text == WEATHER_ANSWER and second.model == "fake-claude"
    check_tool_result_sent(fakellm.exchanges()[1].request, call.call_id)
    # As OpenAI documents: a previous response's instructions are not carried over to the next one.
    assert "Use the tools." not in json.dumps(fakellm.exchanges()[1].request.get("system", ""))

    # A third turn walks the whole chain: every earlier item, oldest first, then the new question.
    third = client.responses.create(model="fake-claude", previous_response_id=second.id, input="Thanks, and hello!")
    assert third.previous_response_id == second.id
    history = fakellm.exchanges()[2].request["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant", "user"]
    assert [text_of(history[i]) for i in (0, 3, 4)] == ["What is the weather in Paris?", WEATHER_ANSWER,
                                                        "Thanks, and hello!"]
    check_tool_result_sent({"messages": history[:3]}, call.call_id)

    upstream = [exchange.usage() for exchange in fakellm.exchanges()]
    assert [usage_pair(first), usage_pair(second), usage_pair(third)] == upstream  # as the upstream reported them
    check_ledger(alice, *(Row("responses", "fake-claude", False, usage) for usage in upstream))


def test_responses_streamed_tool_round_trip(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM) -> None:
    client = openai_sdk(live_server_url, alice)
    first = check_stream(list(client.responses.create(model="fake-claude", input="What is the weather in Paris?",
                                                      tools=[WEATHER_FUNCTION], stream=True)))
    call = function_call(first)
    with client.responses.stream(model="fake-claude", previous_response_id=first.id, tools=[WEATHER_FUNCTION],
                                 input=[{"type": "function_call_output", "call_id": call.call_id,
                                         "output": WEATHER_TOOL_RESULT}]) as stream:
        events = list(stream)
        second = stream.get_final_response()
    check_stream(events)
    assert second.output_text == WEATHER_ANSWER
    check_tool_result_sent(fakellm.exchanges()[1].request, call.call_id)

    upstream = [exchange.usage() for exchange in fakellm.exchanges()]
    assert all(exchange.streamed for exchange in fakellm.exchanges())
    assert [usage_pair(first), usage_pair(second)] == upstream  # as fakellm's message events said
    check_ledger(alice, *(Row("responses", "fake-claude", True, usage) for usage in upstream))


def test_responses_image_input(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM) -> None:
    picture = [{"type": "input_image", "image_url": f"data:image/png;base64,{RED_PIXEL_PNG}", "detail": "auto"},
               {"type": "input_text", "text": "Please describe the picture."}]
    response = openai_sdk(live_server_url, alice).responses.create(
        model="fake-claude", input=[{"role": "user", "content": picture}])
    assert response.output_text == IMAGE_ANSWER
    [sent] = fakellm.exchanges()
    [image] = [b for b in sent.request["messages"][0]["content"] if b["type"] == "image"]
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": RED_PIXEL_PNG}
    assert usage_pair(response) == sent.usage()
    check_ledger(alice, Row("responses", "fake-claude", False, sent.usage(), images=1))
