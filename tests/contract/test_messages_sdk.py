"""The official Anthropic Python SDK's Messages API against a live Tollgate (ANTHROPIC_BASE_URL=<tollgate>).

``demo`` and ``fake-chat`` speak chat completions, so requests to them are translated Messages → chat and the answer
back; ``fake-claude`` is an Anthropic deployment, so requests to it are relayed natively.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Message, ToolUseBlock

from proxy.providers.demo import tokens

from ..conftest import Party
from .conftest import (IMAGE_ANSWER, RED_PIXEL_PNG, WEATHER_ANSWER, WEATHER_SCHEMA, WEATHER_TOOL_RESULT, FakeLLM,
                       Row, check_ledger, ledger_rows, text_of, tool_calls_of)
from .messages_checks import PICTURE, WEATHER_TOOL, anthropic_sdk, check_events, tool_use, usage_pair

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see committed rows

QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


def tool_turns(first: Message, use: ToolUseBlock) -> list[Any]:
    """The conversation after a tool call, as the SDK's docs send it: question, the answer as it came, the result."""
    return [QUESTION, {"role": "assistant", "content": first.content},
            {"role": "user",
             "content": [{"type": "tool_result", "tool_use_id": use.id, "content": WEATHER_TOOL_RESULT}]}]


def test_demo_non_streaming(live_server_url: str, alice: Party, routes: None) -> None:
    message = anthropic_sdk(live_server_url, alice).messages.create(
        model="demo", max_tokens=200, messages=[{"role": "user", "content": "Say hello to the gateway"}])
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "demo")
    assert [block.type for block in message.content] == ["text"] and message.stop_reason == "end_turn"
    assert message.content[0].text.startswith("Hello from Tollgate's demo model! You said: “Say hello to the gateway")
    usage = usage_pair(message)
    assert usage == (len(tokens("Say hello to the gateway")), len(tokens(message.content[0].text)))
    check_ledger(alice, Row("messages", "demo", False, usage))


def test_demo_max_tokens(live_server_url: str, alice: Party, routes: None) -> None:
    client = anthropic_sdk(live_server_url, alice)
    request = {"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": "Say hello to the gateway"}]}
    whole = client.messages.create(**request)
    with client.messages.stream(**request) as stream:
        streamed = stream.get_final_message()
    for message in (whole, streamed):
        assert message.stop_reason == "max_tokens" and message.content[0].text == "Hello from Tollgate's"
        assert usage_pair(message) == (len(tokens("Say hello to the gateway")), 5)
    check_ledger(alice, Row("messages", "demo", False, usage_pair(whole)), Row("messages", "demo", True,
                                                                               usage_pair(streamed)))


def test_demo_streaming_and_image(live_server_url: str, alice: Party, routes: None) -> None:
    client = anthropic_sdk(live_server_url, alice)
    with client.messages.stream(model="demo", max_tokens=200, system="Be brief.",
                                messages=[{"role": "user", "content": PICTURE}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text and text.startswith("Hello from Tollgate's demo model!")
    assert final.model == "demo" and final.stop_reason == "end_turn"
    usage = usage_pair(final)
    assert usage == (len(tokens("Be brief.")) + len(tokens("Please describe the picture.")), len(tokens(text)))
    check_ledger(alice, Row("messages", "demo", True, usage, images=1))


def test_fakellm_over_chat_tool_round_trip_and_image(live_server_url: str, alice: Party, routes: None,
                                                     fakellm: FakeLLM) -> None:
    client = anthropic_sdk(live_server_url, alice)
    first = client.messages.create(model="fake-chat", max_tokens=300, tools=[WEATHER_TOOL], messages=[QUESTION],
                                   system="Use the tools.", tool_choice={"type": "tool", "name": "get_weather"},
                                   stop_sequences=["END"])
    assert first.model == "fake-chat"
    use = tool_use(first)
    sent = fakellm.exchanges()[0]
    asked = sent.request
    assert use.id == tool_calls_of(sent)[0]["id"]
    assert asked["model"] == "fakellm-gpt" and asked["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city now.", "parameters": WEATHER_SCHEMA}}]
    assert asked["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert (asked["messages"][0]["role"], text_of(asked["messages"][0])) == ("system", "Use the tools.")
    assert asked.get("max_tokens", asked.get("max_completion_tokens")) == 300
    assert asked["stop"] == ["END"]

    second = client.messages.create(model="fake-chat", max_tokens=300, tools=[WEATHER_TOOL],
                                    messages=tool_turns(first, use))
    assert [b.type for b in second.content] == ["text"] and second.content[0].text == WEATHER_ANSWER
    history = fakellm.exchanges()[1].request["messages"]
    assert history[-2]["role"] == "assistant" and history[-2]["tool_calls"][0]["id"] == use.id
    assert json.loads(history[-2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert (history[-1]["role"], history[-1]["tool_call_id"], text_of(history[-1])) == ("tool", use.id,
                                                                                         WEATHER_TOOL_RESULT)

    picture = client.messages.create(model="fake-chat", max_tokens=300, messages=[{"role": "user", "content": PICTURE}])
    assert picture.content[0].text == IMAGE_ANSWER
    parts = fakellm.exchanges()[2].request["messages"][-1]["content"]
    assert {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{RED_PIXEL_PNG}"}} in [
        {"type": p["type"], "image_url": {"url": p["image_url"]["url"]}} for p in parts if p["type"] == "image_url"]

    upstream = [exchange.usage() for exchange in fakellm.exchanges()]
    assert [usage_pair(first), usage_pair(second), usage_pair(picture)] == upstream  # as the upstream reported them
    check_ledger(alice, Row("messages", "fake-chat", False, upstream[0]),
                 Row("messages", "fake-chat", False, upstream[1]),
                 Row("messages", "fake-chat", False, upstream[2], images=1))


def test_fakellm_over_chat_streamed_tool_call(live_server_url: str, alice: Party, routes: None,
                                              fakellm: FakeLLM) -> None:
    client = anthropic_sdk(live_server_url, alice)
    events = list(client.messages.create(model="fake-chat", max_tokens=300, tools=[WEATHER_TOOL], messages=[QUESTION],
                                         stream=True))
    summary = check_events(events, "fake-chat")
    [block] = [b for b in summary["blocks"] if b["type"] == "tool_use"]
    assert block["name"] == "get_weather" and json.loads(block["json"]) == {"city": "Paris"}
    assert block["id"] == tool_calls_of(fakellm.exchanges()[0])[0]["id"] and summary["stop_reason"] == "tool_use"

    with client.messages.stream(model="fake-chat", max_tokens=300, tools=[WEATHER_TOOL], messages=[
            QUESTION, {"role": "assistant", "content": [{"type": "tool_use", "id": block["id"], "name": "get_weather",
                                                         "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"],
                                          "content": [{"type": "text", "text": WEATHER_TOOL_RESULT}]}]}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == WEATHER_ANSWER and final.stop_reason == "end_turn"

    # fakellm sends no usage in its chat streams (it ignores stream_options): Tollgate estimates, and the ledger
    # holds exactly what the client was told.
    assert [e.usage() for e in fakellm.exchanges()] == [None, None]
    usages = [summary["usage"], usage_pair(final)]
    assert all(prompt > 0 and completion > 0 for prompt, completion in usages)
    check_ledger(alice, *(Row("messages", "fake-chat", True, usage, "estimated") for usage in usages))


def test_fakellm_native_tool_round_trip_and_image(live_server_url: str, alice: Party, routes: None,
                                                  fakellm: FakeLLM) -> None:
    client = anthropic_sdk(live_server_url, alice)
    first = client.messages.create(model="fake-claude", max_tokens=300, tools=[WEATHER_TOOL], messages=[QUESTION])
    assert first.model == "fake-claude"
    use = tool_use(first)
    sent = fakellm.exchanges()[0]
    assert sent.path == "/v1/messages" and use.id == tool_calls_of(sent)[0]["id"]
    assert sent.request["model"] == "fakellm-claude"
    assert (sent.request["tools"], sent.request["messages"]) == ([WEATHER_TOOL], [QUESTION])

    second = client.messages.create(model="fake-claude", max_tokens=300, tools=[WEATHER_TOOL],
                                    messages=tool_turns(first, use))
    assert second.content[0].text == WEATHER_ANSWER and second.stop_reason == "end_turn"
    assert fakellm.exchanges()[1].request["messages"][-1]["content"][0] == {
        "type": "tool_result", "tool_use_id": use.id, "content": WEATHER_TOOL_RESULT}

    picture = client.messages.create(model="fake-claude", max_tokens=300,
                                     messages=[{"role": "user", "content": PICTURE}])
    assert picture.content[0].text == IMAGE_ANSWER
    assert fakellm.exchanges()[2].request["messages"] == [{"role": "user", "content": PICTURE}]

    upstream = [exchange.usage() for exchange in fakellm.exchanges()]
    assert [usage_pair(first), usage_pair(second), usage_pair(picture)] == upstream  # as the upstream reported them
    check_ledger(alice, Row("messages", "fake-claude", False, upstream[0]),
                 Row("messages", "fake-claude", False, upstream[1]),
                 Row("messages", "fake-claude", False, upstream[2], images=1))


def test_fakellm_native_streaming(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM) -> None:
    client = anthropic_sdk(live_server_url, alice)
    with client.messages.stream(model="fake-claude", max_tokens=300, tools=[WEATHER_TOOL],
                                messages=[QUESTION]) as stream:
        first = stream.get_final_message()
    use = tool_use(first)
    assert first.model == "fake-claude" and use.id == tool_calls_of(fakellm.exchanges()[0])[0]["id"]

    events = list(client.messages.create(model="fake-claude", max_tokens=300, tools=[WEATHER_TOOL], stream=True,
                                         messages=tool_turns(first, use)))
    summary = check_events(events, "fake-claude")
    assert [b["text"] for b in summary["blocks"]] == [WEATHER_ANSWER] and summary["stop_reason"] == "end_turn"

    upstream = [exchange.usage() for exchange in fakellm.exchanges()]
    assert all(exchange.streamed for exchange in fakellm.exchanges())
    assert [usage_pair(first), summary["usage"]] == upstream  # tokens as the upstream reported them
    check_ledger(alice, *(Row("messages", "fake-claude", True, usage) for usage in upstream))


def test_count_tokens(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM) -> None:
    messages = anthropic_sdk(live_server_url, alice).messages
    for model in ("demo", "fake-chat", "fake-claude"):
        plain = messages.count_tokens(model=model, messages=[QUESTION])
        with_tool = messages.count_tokens(model=model, messages=[QUESTION], tools=[WEATHER_TOOL])
        type(plain).model_validate(plain.to_dict())
        assert 0 < plain.input_tokens < with_tool.input_tokens
    # Counting is Tollgate's own estimate: no provider is asked, and nothing is billed.
    assert fakellm.exchanges() == [] and ledger_rows(alice, 0) == []
