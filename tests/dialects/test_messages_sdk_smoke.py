"""The official anthropic SDK against /v1/messages in process (over httpx2's ASGI transport into the handler that
serves /v1): whole and streamed answers, tools, and count_tokens, with a Tollgate key as its API key."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import pytest
from asgiref.sync import async_to_sync

from billing.models import UsageRecord
from proxy import routing
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..proxy.v1_client import api_handler

WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def demo(alice: Party) -> Party:
    ensure_demo_route()
    routing.invalidate()
    return alice


def client(secret: str) -> anthropic.AsyncAnthropic:
    transport = httpx2.ASGITransport(app=api_handler())
    return anthropic.AsyncAnthropic(api_key=secret, base_url="http://tollgate.test", max_retries=0,
                                    http_client=httpx2.AsyncClient(transport=transport))


def test_the_anthropic_sdk_speaks_to_tollgate(demo: Party) -> None:
    async def run() -> tuple[Any, Any, Any, Any]:
        sdk = client(demo.secret)
        whole = await sdk.messages.create(model="demo", max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
                                          messages=[{"role": "user", "content": "Hello there"}])
        async with sdk.messages.stream(model="demo", max_tokens=6, system="Be brief.",
                                       messages=[{"role": "user", "content": "Hello there"}]) as stream:
            texts = [text async for text in stream.text_stream]
            streamed = await stream.get_final_message()
        counted = await sdk.messages.count_tokens(model="demo", messages=[{"role": "user", "content": "Hello there"}])
        try:
            await client("tg-nobody-0000").messages.create(model="demo", max_tokens=5,
                                                          messages=[{"role": "user", "content": "x"}])
        except anthropic.AuthenticationError as e:
            refused = e
        return whole, (texts, streamed), counted, refused

    whole, (texts, streamed), counted, refused = async_to_sync(run)()
    assert whole.model == "demo" and whole.content[0].type == "text" and whole.stop_reason == "end_turn"
    assert "".join(texts) == streamed.content[0].text and streamed.stop_reason == "max_tokens"
    assert streamed.usage.output_tokens == 6 and streamed.usage.input_tokens > 0
    assert counted.input_tokens > 0
    assert refused.status_code == 401 and refused.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    rows = UsageRecord.objects.filter(tenant=demo.tenant).order_by("id")
    assert [(r.endpoint, r.stream, r.end_reason) for r in rows] == [("messages", False, "complete"),
                                                                   ("messages", True, "complete")]
    assert rows[0].prompt_tokens == whole.usage.input_tokens and rows[1].completion_tokens == 6
