"""Google Gemini's OpenAI-compatible endpoint (the "gemini" preset), on recorded exchanges: usage on the last content
chunk, cached prompt tokens, and thought tokens billed as output although completion_tokens leaves them out."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client

from billing.models import UsageRecord
from proxy.models import Deployment, ModelRoute, Provider
from proxy.providers import http
from proxy.providers.base import ApiRequest, Chunk, JSONDict, Target, UpstreamReply
from proxy.providers.compatible import OpenAICompatibleProvider
from proxy.upstream import HttpUpstream

from ..conftest import Party
from ..live import serve_app
from .retrying import chat, healthy, row_of  # noqa: F401 (fixture)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KEY = "AIzaSy-test-gemini-key"
GEMINI = Provider(name="gemini", kind="openai_compatible", preset="gemini")
TARGET = Target(public_model="gemini-flash", deployment_id=1, provider_name="gemini", kind="openai_compatible",
                base_url=GEMINI.resolved_base_url(), upstream_model="gemini-2.5-flash", api_key=KEY,
                stream_usage=bool(GEMINI.quirks()["stream_usage"]), options=GEMINI.quirks())
HELLO = [{"role": "user", "content": "Salut"}]
seen: list[dict[str, Any]] = []


class Body:
    """An aiohttp body stand-in that arrives in small pieces."""

    def __init__(self, body: bytes) -> None:
        self.body, self.content = body, self

    async def iter_any(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), 11):
            yield self.body[start:start + 11]


def replay(name: str) -> list[Chunk]:
    translate = OpenAICompatibleProvider().stream_translator(TARGET, ApiRequest("chat", "gemini-flash", {}, stream=True))
    source = HttpUpstream(http.lines(Body((FIXTURES / name).read_bytes())), translate, lambda: None)  # type: ignore[arg-type]

    async def run() -> list[Chunk]:
        return [chunk async for chunk in source]

    return asyncio.run(run())


def recorded_answer() -> JSONDict:
    data: JSONDict = json.loads((FIXTURES / "gemini_answer_thinking.json").read_text())
    return data


def test_the_preset_sends_openai_chat_to_geminis_endpoint_with_stream_usage() -> None:
    request = OpenAICompatibleProvider().build_request(
        TARGET, ApiRequest("chat", "gemini-flash", {"messages": HELLO, "stream": True}, stream=True))
    assert request.url == "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.json() == {"messages": HELLO, "stream": True, "model": "gemini-2.5-flash",
                              "stream_options": {"include_usage": True}}


def test_a_recorded_stream_reads_usage_from_the_last_content_chunk() -> None:
    chunks = replay("gemini_stream_thinking.txt")
    assert "".join(c.text for c in chunks) == "Bonjour ! Le café est prêt — et le code aussi."
    *content, last = chunks
    assert last.finished and not last.usage_only  # Gemini puts usage on the chunk that finishes, with its text
    assert last.usage is not None
    # 1302 total - 1041 prompt: 14 visible tokens and 247 thought tokens, all billed as output.
    assert dataclasses.astuple(last.usage) == (1041, 261, 1024, 0)
    assert not any(c.usage or c.finished for c in content)
    assert {json.loads(c.data or b"")["model"] for c in chunks} == {"gemini-flash"}


def test_a_recorded_answer_bills_its_thought_tokens() -> None:
    data = recorded_answer()
    completion = OpenAICompatibleProvider().parse_response(TARGET, ApiRequest("chat", "gemini-flash", {}), data)
    assert completion.usage is not None and dataclasses.astuple(completion.usage) == (20, 395, 0, 0)
    assert completion.payload["model"] == "gemini-flash" and completion.text == "15% of 240 is 36."
    assert completion.payload["usage"] == data["usage"]  # the client sees Gemini's own report


def test_an_upstream_that_counts_thoughts_in_completion_tokens_is_not_billed_twice() -> None:
    data = recorded_answer()
    data["usage"]["completion_tokens"] = 395  # total 415 = 20 + 395
    completion = OpenAICompatibleProvider().parse_response(TARGET, ApiRequest("chat", "gemini-flash", {}), data)
    assert completion.usage is not None and completion.usage.completion_tokens == 395
    openai = dataclasses.replace(TARGET, options={})  # other presets read completion_tokens as they are
    completion = OpenAICompatibleProvider().parse_response(openai, ApiRequest("chat", "gemini-flash", {}),
                                                           recorded_answer())
    assert completion.usage is not None and completion.usage.completion_tokens == 10


def test_geminis_error_list_maps_to_a_400_without_its_message() -> None:
    content = json.dumps([{"error": {"code": 400, "message": "Invalid JSON payload received. Unknown name \"x\": "
                                                             "Cannot find field. prompt: hunter2",
                                     "status": "INVALID_ARGUMENT"}}]).encode()
    error = OpenAICompatibleProvider().error_for(UpstreamReply(400, {}, content))
    assert (error.status, error.code, error.permanent) == (400, "upstream_bad_request", True)
    assert "hunter2" not in json.dumps(error.envelope())


def test_geminis_prompt_too_long_is_context_length_exceeded() -> None:
    # The context window fallbacks apply: Gemini says it in its own words, inside its list.
    content = json.dumps([{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "The input token count "
                                     "(1196724) exceeds the maximum number of tokens allowed (1048575)."}}]).encode()
    error = OpenAICompatibleProvider().error_for(UpstreamReply(400, {}, content))
    assert (error.status, error.code) == (400, "context_length_exceeded")
    assert OpenAICompatibleProvider().error_for(UpstreamReply(400, {}, b"[]")).code == "upstream_bad_request"


async def gemini(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Replays the recorded exchanges, as Gemini's OpenAI-compatible endpoint would answer them."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    data = json.loads(body)
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    seen.append({"path": scope["path"], "authorization": headers.get("authorization"), "body": data})
    if data.get("stream"):
        kind, content = b"text/event-stream", (FIXTURES / "gemini_stream_thinking.txt").read_bytes()
    else:
        kind, content = b"application/json", (FIXTURES / "gemini_answer_thinking.json").read_bytes()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
    await send({"type": "http.response.body", "body": content})


@pytest.fixture(scope="module")
def gemini_url() -> Iterator[str]:
    with serve_app(gemini) as url:
        yield url


@pytest.fixture
def routed(db: None, gemini_url: str) -> ModelRoute:
    seen.clear()
    provider = Provider(name="gemini", kind="openai_compatible", preset="gemini", base_url=gemini_url + "/v1beta/openai")
    provider.set_credential(KEY)
    provider.full_clean()
    provider.save()
    route = ModelRoute.objects.create(name="gemini-flash")
    Deployment.objects.create(route=route, provider=provider, upstream_model="gemini-2.5-flash")
    return route


def test_recorded_exchanges_end_to_end_bill_thoughts_and_cache(client: Client, alice: Party, routed: ModelRoute) -> None:
    response = chat(client, alice, "gemini-flash")
    assert response.status_code == 200 and response.json()["model"] == "gemini-flash"
    row = row_of(response)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (20, 395, 0)

    async def stream() -> tuple[str, bytes]:
        answer = await AsyncClient().post(
            "/v1/chat/completions", json.dumps({"model": "gemini-flash", "stream": True, "messages": HELLO}),
            content_type="application/json", headers=alice.auth)
        return answer["x-request-id"], b"".join([part async for part in answer.streaming_content])

    request_id, content = async_to_sync(stream)()
    assert content.endswith(b"data: [DONE]\n\n") and b'"model":"gemini-2.5-flash"' not in content
    row = UsageRecord.objects.get(request_id=request_id)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (1041, 261, 1024)
    assert row.usage_source == UsageRecord.Source.PROVIDER
    assert seen[-1]["path"] == "/v1beta/openai/chat/completions" and seen[-1]["authorization"] == f"Bearer {KEY}"
    assert seen[-1]["body"]["stream_options"] == {"include_usage": True}
