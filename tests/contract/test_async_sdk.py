"""The SDKs' async clients (their own HTTP code paths) streaming through Tollgate, one translation direction each."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from ..conftest import Party
from .conftest import WEATHER_ANSWER, WEATHER_TOOL_RESULT, FakeLLM, Row, check_ledger
from .messages_checks import WEATHER_TOOL, check_events
from .responses_checks import WEATHER_FUNCTION, check_stream, function_call, usage_pair

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see committed rows


def test_async_openai_responses_over_anthropic(live_server_url: str, alice: Party, routes: None,
                                               fakellm: FakeLLM) -> None:
    async def run() -> tuple[Any, Any]:
        async with AsyncOpenAI(base_url=f"{live_server_url}/v1", api_key=alice.secret, max_retries=0) as client:
            stream = await client.responses.create(model="fake-claude", input="What is the weather in Paris?",
                                                   tools=[WEATHER_FUNCTION], stream=True)
            first = check_stream([event async for event in stream])
            output = {"type": "function_call_output", "call_id": function_call(first).call_id,
                      "output": WEATHER_TOOL_RESULT}
            async with client.responses.stream(model="fake-claude", previous_response_id=first.id,
                                               input=[output]) as second_stream:
                check_stream([event async for event in second_stream])
                return first, await second_stream.get_final_response()

    first, second = asyncio.run(run())
    assert second.output_text == WEATHER_ANSWER
    upstream = [exchange.usage() for exchange in fakellm.exchanges()]
    assert [usage_pair(first), usage_pair(second)] == upstream
    check_ledger(alice, *(Row("responses", "fake-claude", True, usage) for usage in upstream))


def test_async_anthropic_messages_native_and_over_chat(live_server_url: str, alice: Party, routes: None,
                                                       fakellm: FakeLLM) -> None:
    async def run(model: str) -> dict[str, Any]:
        async with AsyncAnthropic(base_url=live_server_url, api_key=alice.secret, max_retries=0) as client:
            stream = await client.messages.create(model=model, max_tokens=300, stream=True, tools=[WEATHER_TOOL],
                                                  messages=[{"role": "user", "content": "What is the weather?"}])
            return check_events([event async for event in stream], model)

    native, translated = asyncio.run(run("fake-claude")), asyncio.run(run("fake-chat"))
    for summary in (native, translated):
        [use] = [block for block in summary["blocks"] if block["type"] == "tool_use"]
        assert use["name"] == "get_weather" and json.loads(use["json"]) == {"city": "Paris"}
    native_usage, chat_usage = [exchange.usage() for exchange in fakellm.exchanges()]
    assert native["usage"] == native_usage and chat_usage is None  # fakellm's chat streams carry no usage
    check_ledger(alice, Row("messages", "fake-claude", True, native_usage),
                 Row("messages", "fake-chat", True, translated["usage"], "estimated"))
