"""Two tool calls in one answer, through every translation direction, streamed and not: each call keeps its own id,
name, arguments and place, as each official SDK reads them.
"""

from __future__ import annotations

import json

import pytest

from ..conftest import Party
from .conftest import FakeLLM, Row, check_ledger, tool_calls_of
from .messages_checks import WEATHER_TOOL, anthropic_sdk, check_events
from .responses_checks import WEATHER_FUNCTION, check_stream, openai_sdk, strict, usage_pair

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see committed rows

QUESTION = "What is the weather in Paris and Rome?"
CITIES = [{"city": "Paris"}, {"city": "Rome"}]


def upstream_row(endpoint: str, model: str, stream: bool, fakellm: FakeLLM, told: tuple[int, int]) -> Row:
    """The row a request must leave: the upstream's own counts, or (a chat stream, where fakellm sends none) the
    estimate the client was told."""
    [exchange] = fakellm.exchanges()
    reported = exchange.usage()
    if reported is None:
        return Row(endpoint, model, stream, told, "estimated")
    assert told == reported
    return Row(endpoint, model, stream, reported)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["fake-chat", "fake-claude"])
def test_responses(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM, model: str,
                   stream: bool) -> None:
    client = openai_sdk(live_server_url, alice)
    if stream:
        response = check_stream(list(client.responses.create(model=model, input=QUESTION, tools=[WEATHER_FUNCTION],
                                                             stream=True)))
    else:
        response = client.responses.create(model=model, input=QUESTION, tools=[WEATHER_FUNCTION])
    calls = [item for item in response.output if item.type == "function_call"]
    assert [json.loads(call.arguments) for call in calls] == CITIES and {c.name for c in calls} == {"get_weather"}
    assert [call.call_id for call in calls] == [c["id"] for c in tool_calls_of(fakellm.exchanges()[0])]
    assert len({call.id for call in calls}) == 2
    check_ledger(alice, upstream_row("responses", model, stream, fakellm, usage_pair(response)))


@pytest.mark.parametrize("stream", [False, True])
def test_messages_over_chat(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM, stream: bool) -> None:
    client = anthropic_sdk(live_server_url, alice)
    request = {"model": "fake-chat", "max_tokens": 300, "tools": [WEATHER_TOOL],
               "messages": [{"role": "user", "content": QUESTION}]}
    if stream:
        summary = check_events(list(client.messages.create(**request, stream=True)), "fake-chat")
        uses = [(b["id"], json.loads(b["json"])) for b in summary["blocks"] if b["type"] == "tool_use"]
        stop_reason, usage = summary["stop_reason"], summary["usage"]
    else:
        message = client.messages.create(**request)
        uses = [(b.id, b.input) for b in message.content if b.type == "tool_use"]
        stop_reason, usage = message.stop_reason, (message.usage.input_tokens, message.usage.output_tokens)
        strict(message)
    assert uses == [(c["id"], c["arguments"]) for c in tool_calls_of(fakellm.exchanges()[0])]
    assert [arguments for _, arguments in uses] == CITIES and stop_reason == "tool_use"
    check_ledger(alice, upstream_row("messages", "fake-chat", stream, fakellm, usage))


@pytest.mark.parametrize("stream", [False, True])
def test_chat_over_anthropic(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM, stream: bool) -> None:
    client = openai_sdk(live_server_url, alice)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}}
    request = {"model": "fake-claude", "tools": [tool], "messages": [{"role": "user", "content": QUESTION}]}
    if stream:
        chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
        calls: dict[int, dict[str, str]] = {}
        for chunk in chunks:
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                call = calls.setdefault(delta.index, {"id": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
        uses = [(c["id"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
        strict(*chunks)
    else:
        completion = client.chat.completions.create(**request)
        uses = [(c.id, json.loads(c.function.arguments)) for c in completion.choices[0].message.tool_calls]
        finish, usage = [completion.choices[0].finish_reason], completion.usage
        strict(completion)
    assert uses == [(c["id"], c["arguments"]) for c in tool_calls_of(fakellm.exchanges()[0])]
    assert [arguments for _, arguments in uses] == CITIES and finish == ["tool_calls"]
    assert usage is not None
    check_ledger(alice, upstream_row("chat", "fake-claude", stream, fakellm, (usage.prompt_tokens,
                                                                                usage.completion_tokens)))
