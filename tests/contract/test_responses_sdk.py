"""The official OpenAI Python SDK's Responses API against a live Tollgate: the demo model and fakellm over chat.

``fake-chat`` speaks only chat completions, so every request here is translated Responses → chat and the answer
back; the conversation of a ``previous_response_id`` is Tollgate's own stored state.
"""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from proxy.providers.demo import tokens

from ..conftest import Party, make_party
from .conftest import WEATHER_ANSWER, WEATHER_TOOL_RESULT, FakeLLM, Row, check_ledger, text_of, tool_calls_of
from .responses_checks import WEATHER_FUNCTION, check_stream, function_call, openai_sdk, strict, usage_pair

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see committed rows

DEMO_PROMPT = "Say hello to the gateway please"


def demo_tokens(*texts: str) -> int:
    return sum(len(tokens(text)) for text in texts)


def test_demo_non_streaming(live_server_url: str, alice: Party, routes: None) -> None:
    response = openai_sdk(live_server_url, alice).responses.create(model="demo", input=DEMO_PROMPT)
    assert response.object == "response" and response.id.startswith("resp_") and response.status == "completed"
    assert response.model == "demo"
    assert response.output_text.startswith("Hello from Tollgate's demo model! You said: “Say hello to the gateway")
    [message] = response.output
    assert (message.type, message.role, message.status) == ("message", "assistant", "completed")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    usage = usage_pair(response)
    assert usage == (demo_tokens(DEMO_PROMPT), demo_tokens(response.output_text))
    check_ledger(alice, Row("responses", "demo", False, usage))


def test_demo_streaming(live_server_url: str, alice: Party, routes: None) -> None:
    events = list(openai_sdk(live_server_url, alice).responses.create(model="demo", input=DEMO_PROMPT, stream=True))
    final = check_stream(events)
    assert final.model == "demo" and final.output_text.startswith("Hello from Tollgate's demo model!")
    assert sum(e.type == "response.output_text.delta" for e in events) > 5  # token by token, not one lump
    usage = usage_pair(final)
    assert usage == (demo_tokens(DEMO_PROMPT), demo_tokens(final.output_text))
    check_ledger(alice, Row("responses", "demo", True, usage))


def test_demo_stream_helper_and_previous_response_id(live_server_url: str, alice: Party, routes: None) -> None:
    client = openai_sdk(live_server_url, alice)
    first = client.responses.create(model="demo", input="Remember the word marmalade")
    with client.responses.stream(model="demo", input="Which word?", previous_response_id=first.id) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        second = stream.get_final_response()
    assert second.previous_response_id == first.id and second.id != first.id
    assert "".join(deltas) == second.output_text
    # The demo model echoes the start of its whole prompt: the first turn came back from Tollgate's storage.
    assert "You said: “Remember the word marmalade" in second.output_text
    usage = usage_pair(second)
    assert usage[0] == demo_tokens("Remember the word marmalade", first.output_text, "Which word?")
    check_ledger(alice, Row("responses", "demo", False, usage_pair(first)), Row("responses", "demo", True, usage))
    assert client.responses.retrieve(second.id).output_text == second.output_text

    # Another tenant can neither read alice's responses nor continue her conversation.
    bob = openai_sdk(live_server_url, make_party("bob"))
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError) as missing:
        bob.responses.create(model="demo", input="Which word?", previous_response_id=second.id)
    assert missing.value.code == "previous_response_not_found"


def test_demo_max_output_tokens_is_incomplete(live_server_url: str, alice: Party, routes: None) -> None:
    client = openai_sdk(live_server_url, alice)
    whole = client.responses.create(model="demo", input=DEMO_PROMPT, max_output_tokens=16)
    streamed = check_stream(list(client.responses.create(model="demo", input=DEMO_PROMPT, max_output_tokens=16,
                                                         stream=True)), status="incomplete")
    for response in (whole, streamed):
        assert response.status == "incomplete" and response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens" and response.max_output_tokens == 16
        assert usage_pair(response) == (demo_tokens(DEMO_PROMPT), 16) == (demo_tokens(DEMO_PROMPT),
                                                                          demo_tokens(response.output_text))
    check_ledger(alice, Row("responses", "demo", False, usage_pair(whole)), Row("responses", "demo", True,
                                                                                 usage_pair(streamed)))


def test_demo_stored_response_read_listed_and_deleted(live_server_url: str, alice: Party, routes: None) -> None:
    client = openai_sdk(live_server_url, alice)
    created = client.responses.create(model="demo", input=[
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": DEMO_PROMPT}])
    read = client.responses.retrieve(created.id)
    assert (read.id, read.status, read.output_text, usage_pair(read)) == (created.id, "completed", created.output_text,
                                                                           usage_pair(created))
    items = list(client.responses.input_items.list(created.id, order="asc"))
    assert [(item.type, item.role) for item in items] == [("message", "developer"), ("message", "user")]
    assert [item.content[0].text for item in items] == ["Be brief.", DEMO_PROMPT] and all(item.id for item in items)
    strict(*items)
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    check_ledger(alice, Row("responses", "demo", False, usage_pair(created)))


def test_demo_function_call_output_in_input(live_server_url: str, alice: Party, routes: None) -> None:
    # The demo model calls no tools, but it must accept a conversation that holds a call and its output.
    response = openai_sdk(live_server_url, alice).responses.create(model="demo", tools=[WEATHER_FUNCTION], input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": WEATHER_TOOL_RESULT},
    ])
    assert response.status == "completed" and response.output_text.startswith("Hello from Tollgate's demo model!")
    check_ledger(alice, Row("responses", "demo", False, usage_pair(response)))


def test_fakellm_function_call_round_trip(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM) -> None:
    client = openai_sdk(live_server_url, alice)
    first = client.responses.create(model="fake-chat", input="What is the weather in Paris?", tools=[WEATHER_FUNCTION],
                                    instructions="Use the tools.")
    assert first.model == "fake-chat" and first.status == "completed"
    call = function_call(first)
    [sent] = fakellm.exchanges()
    asked = sent.request
    assert asked["model"] == "fakellm-gpt"
    assert asked["messages"][0]["role"] in ("system", "developer") and text_of(asked["messages"][0]) == "Use the tools."
    assert (asked["messages"][-1]["role"], text_of(asked["messages"][-1])) == ("user", "What is the weather in Paris?")
    assert asked["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city now.",
        "parameters": WEATHER_FUNCTION["parameters"], "strict": True}}]
    assert call.call_id == tool_calls_of(sent)[0]["id"]

    second = client.responses.create(model="fake-chat", previous_response_id=first.id, tools=[WEATHER_FUNCTION],
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": WEATHER_TOOL_RESULT}])
    assert second.output_text == WEATHER_ANSWER and second.previous_response_id == first.id
    # The stored conversation went upstream in chat form: the user's question, the call, and its result.
    history = fakellm.exchanges()[1].request["messages"]
    # As OpenAI documents: a previous response's instructions are not carried over to the next one.
    assert [m for m in history if m["role"] in ("system", "developer")] == []
    assert text_of(history[-3]) == "What is the weather in Paris?"
    assert history[-2]["role"] == "assistant" and history[-2]["tool_calls"][0]["id"] == call.call_id
    assert json.loads(history[-2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert (history[-1]["role"], history[-1]["tool_call_id"], text_of(history[-1])) == ("tool", call.call_id,
                                                                                         WEATHER_TOOL_RESULT)

    upstream = [exchange.usage() for exchange in fakellm.exchanges()]
    assert [usage_pair(first), usage_pair(second)] == upstream  # tokens as the upstream reported them
    check_ledger(alice, *(Row("responses", "fake-chat", False, usage) for usage in upstream))


def test_fakellm_streamed_function_call_round_trip(live_server_url: str, alice: Party, routes: None,
                                                   fakellm: FakeLLM) -> None:
    client = openai_sdk(live_server_url, alice)
    events = list(client.responses.create(model="fake-chat", input="What is the weather in Paris?",
                                          tools=[WEATHER_FUNCTION], stream=True))
    first = check_stream(events)
    call = function_call(first)
    assert call.call_id == tool_calls_of(fakellm.exchanges()[0])[0]["id"]
    assert sum(e.type == "response.function_call_arguments.delta" for e in events) > 1  # streamed in pieces

    events = list(client.responses.create(model="fake-chat", previous_response_id=first.id, stream=True,
                                          input=[{"type": "function_call_output", "call_id": call.call_id,
                                                  "output": WEATHER_TOOL_RESULT}]))
    second = check_stream(events)
    assert second.output_text == WEATHER_ANSWER and second.model == "fake-chat"

    # fakellm sends no usage in its chat streams (it ignores stream_options): Tollgate estimates, and the ledger
    # holds exactly what the client was told.
    assert [e.usage() for e in fakellm.exchanges()] == [None, None]
    usages = [usage_pair(first), usage_pair(second)]
    assert all(prompt > 0 and completion > 0 for prompt, completion in usages)
    check_ledger(alice, *(Row("responses", "fake-chat", True, usage, "estimated") for usage in usages))


class Weather(BaseModel):
    city: str
    temperature_c: int


def test_structured_output(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM) -> None:
    client = openai_sdk(live_server_url, alice)
    parsed = client.responses.parse(model="fake-chat", input="Give the weather as JSON", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris", temperature_c=18)
    [sent] = fakellm.exchanges()
    format_ = sent.request["response_format"]
    assert format_["type"] == "json_schema" and format_["json_schema"]["name"] == "Weather"
    assert format_["json_schema"]["strict"] is True
    assert format_["json_schema"]["schema"]["required"] == ["city", "temperature_c"]
    assert usage_pair(parsed) == sent.usage()
    check_ledger(alice, Row("responses", "fake-chat", False, sent.usage()))



def test_structured_output_over_anthropic(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM) -> None:
    # Anthropic's API has no JSON mode: the schema goes as a tool Claude must call, and its input is the answer.
    client = openai_sdk(live_server_url, alice)
    parsed = client.responses.parse(model="fake-claude", input="Give the weather as JSON", text_format=Weather)
    with client.responses.stream(model="fake-claude", input="Give the weather as JSON", text_format=Weather) as stream:
        events = list(stream)
        streamed = stream.get_final_response()
    check_stream(events)
    for response in (parsed, streamed):
        assert response.output_parsed == Weather(city="Paris", temperature_c=18)
        assert [item.type for item in response.output] == ["message"]  # an answer, not a function call
    for exchange in fakellm.exchanges():
        [tool] = exchange.request["tools"]
        assert tool["name"] == "Weather" and tool["input_schema"]["required"] == ["city", "temperature_c"]
        assert exchange.request["tool_choice"] == {"type": "tool", "name": "Weather"}
    upstream = [exchange.usage() for exchange in fakellm.exchanges()]
    assert [usage_pair(parsed), usage_pair(streamed)] == upstream
    check_ledger(alice, Row("responses", "fake-claude", False, upstream[0]),
                 Row("responses", "fake-claude", True, upstream[1]))
