from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from proxy.errors import GatewayError, ProviderError
from proxy.models import Provider
from proxy.providers import http
from proxy.providers.base import ApiRequest, Chunk, JSONDict, Target, UpstreamRequest
from proxy.providers.compatible import PRESETS, OpenAICompatibleProvider
from proxy.upstream import HttpUpstream

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TARGET = Target(
    public_model="gpt-4o-mini", deployment_id=1, provider_name="openai", kind="openai_compatible",
    base_url="https://api.openai.com/v1", upstream_model="gpt-4o-mini-2024-07-18", api_key="sk-test-upstream",
    stream_usage=True, options=dict(PRESETS["openai"]),
)
SECRET_UPSTREAM_MESSAGE = "prompt said: my password is hunter2"
KNOWN_QUIRKS = {"base_url", "stream_usage", "renames", "responses", "usage_from_total"}
HELLO = [{"role": "user", "content": "hi"}]


class TrickleBody:
    """Stands in for an aiohttp response body that arrives in small pieces, so SSE lines (and UTF-8
    characters) are split across reads; optionally it breaks off at the end."""

    def __init__(self, body: bytes, size: int = 7, fail_with: Exception | None = None) -> None:
        self.body, self.size, self.fail_with = body, size, fail_with
        self.content = self

    async def iter_any(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.size):
            yield self.body[start:start + self.size]
        if self.fail_with is not None:
            raise self.fail_with


def chat(data: JSONDict | None = None, *, stream: bool = True, endpoint: str = "chat") -> ApiRequest:
    return ApiRequest(endpoint=endpoint, model="gpt-4o-mini", data=data if data is not None else {"messages": HELLO},
                      stream=stream)


def build(data: JSONDict, target: Target = TARGET, **kwargs: Any) -> tuple[UpstreamRequest, JSONDict]:
    request = OpenAICompatibleProvider().build_request(target, chat(data, **kwargs))
    return request, request.json()


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def upstream(body: bytes, **stream_kwargs: Any) -> HttpUpstream:
    response = TrickleBody(body, **stream_kwargs)
    return HttpUpstream(http.lines(response), OpenAICompatibleProvider().stream_translator(TARGET, chat()),  # type: ignore[arg-type]
                        lambda: None)


def collect(source: HttpUpstream) -> list[Chunk]:
    async def run() -> list[Chunk]:
        try:
            return [chunk async for chunk in source]
        finally:
            await source.aclose()

    return asyncio.run(run())


def replay(name: str) -> list[Chunk]:
    return collect(upstream((FIXTURES / name).read_bytes()))


def data_lines(name: str) -> list[bytes]:
    """The payloads of a fixture's `data:` lines, as bytes, without the final [DONE]."""
    lines = [line.removeprefix(b"data: ") for line in (FIXTURES / name).read_bytes().splitlines()
             if line.startswith(b"data: ")]
    assert lines[-1] == b"[DONE]"
    return lines[:-1]


def test_openai_stream_forwards_every_payload_byte_for_byte_but_the_model_name() -> None:
    chunks = replay("openai_stream_hello.txt")
    renamed = [line.replace(b'"model":"gpt-4o-mini-2024-07-18"', b'"model":"gpt-4o-mini"')
               for line in data_lines("openai_stream_hello.txt")]
    assert [chunk.data for chunk in chunks] == renamed
    assert "".join(chunk.text for chunk in chunks) == "Hello! How can I help you today — café or code?"


def test_openai_stream_ends_with_a_finish_chunk_then_a_usage_only_chunk() -> None:
    *content, finish, usage = replay("openai_stream_hello.txt")
    assert finish.finished and not finish.usage_only and finish.usage is None
    assert usage.usage_only and not usage.finished and usage.text == ""
    assert usage.usage is not None
    assert dataclasses.astuple(usage.usage) == (1033, 14, 1024, 0)  # prompt, completion, cached, cache writes
    assert not any(chunk.finished or chunk.usage_only or chunk.usage for chunk in content)


def test_stream_without_usage_carries_no_usage() -> None:
    chunks = replay("lmstudio_stream_no_usage.txt")
    assert [chunk.data for chunk in chunks] == [
        line.replace(b'"model":"qwen2.5-7b-instruct"', b'"model":"gpt-4o-mini"')
        for line in data_lines("lmstudio_stream_no_usage.txt")]
    assert "".join(chunk.text for chunk in chunks) == "Hi there! I'm running locally."
    assert all(chunk.usage is None and not chunk.usage_only for chunk in chunks)
    assert [chunk.finished for chunk in chunks] == [False] * (len(chunks) - 1) + [True]


def test_stream_cut_before_the_finish_chunk_is_upstream_cut() -> None:
    body = b"".join(b"data: " + line + b"\n\n" for line in data_lines("openai_stream_hello.txt")[:4])
    with pytest.raises(ProviderError) as caught:
        collect(upstream(body))
    error = caught.value
    assert (error.status, error.code, error.end_reason, error.permanent) == (502, "upstream_cut", "upstream_cut", False)


def test_connection_dropped_mid_stream_is_upstream_cut() -> None:
    body = b"".join(b"data: " + line + b"\n\n" for line in data_lines("openai_stream_hello.txt")[:4])
    with pytest.raises(ProviderError) as caught:
        collect(upstream(body, fail_with=aiohttp.ClientPayloadError("Response payload is not completed")))
    assert caught.value.end_reason == "upstream_cut"


def test_read_timeout_mid_stream_is_a_timeout() -> None:
    body = b"".join(b"data: " + line + b"\n\n" for line in data_lines("openai_stream_hello.txt")[:4])
    with pytest.raises(ProviderError) as caught:
        collect(upstream(body, fail_with=aiohttp.SocketTimeoutError("no bytes for 120 s")))
    assert (caught.value.status, caught.value.end_reason) == (504, "timeout")


@pytest.mark.parametrize(
    "payload",
    [json.dumps({"error": {"message": SECRET_UPSTREAM_MESSAGE, "type": "server_error", "code": None}}),
     "not json " + SECRET_UPSTREAM_MESSAGE],
)
def test_error_event_mid_stream_raises_without_the_upstream_message(payload: str) -> None:
    first = data_lines("openai_stream_hello.txt")[0]
    body = b"data: " + first + b"\n\ndata: " + payload.encode() + b"\n\n"
    with pytest.raises(ProviderError) as caught:
        collect(upstream(body))
    error = caught.value
    assert (error.status, error.code, error.permanent) == (502, "upstream_error", False)
    assert "hunter2" not in error.message and "hunter2" not in json.dumps(error.envelope())


def test_stream_request_asks_for_usage() -> None:
    _, payload = build({"messages": HELLO, "stream": True})
    assert payload["stream_options"] == {"include_usage": True}
    _, payload = build({"messages": HELLO, "stream": True, "stream_options": {"include_usage": False}})
    assert payload["stream_options"] == {"include_usage": True}


def test_stream_options_are_removed_when_the_preset_has_no_stream_usage() -> None:
    target = dataclasses.replace(TARGET, stream_usage=False, options=dict(PRESETS["lmstudio"]))
    _, payload = build({"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}, target)
    assert "stream_options" not in payload
    assert payload["stream"] is True


def test_non_stream_request_sends_no_stream_options() -> None:
    _, payload = build({"messages": HELLO, "stream_options": {"include_usage": True}}, stream=False)
    assert "stream_options" not in payload


def test_mistral_preset_renames_max_completion_tokens() -> None:
    mistral = Provider(name="mistral", kind="openai_compatible", preset="mistral")
    target = dataclasses.replace(TARGET, base_url=mistral.resolved_base_url(), options=mistral.quirks(),
                                 stream_usage=bool(mistral.quirks()["stream_usage"]))
    request, payload = build({"messages": HELLO, "max_completion_tokens": 64, "stream": True}, target)
    assert str(request.url) == "https://api.mistral.ai/v1/chat/completions"
    assert payload["max_tokens"] == 64
    assert "max_completion_tokens" not in payload and "stream_options" not in payload


def test_request_replaces_the_model_and_keeps_the_rest_of_the_body() -> None:
    data = {"model": "gpt-4o-mini", "messages": HELLO, "temperature": 0.3, "user": "u-42", "tools": []}
    request, payload = build(data, stream=False)
    assert payload == {**data, "model": "gpt-4o-mini-2024-07-18"}
    assert request.method == "POST"
    assert lower(request.headers)["content-type"] == "application/json"


def test_authorization_is_sent_only_with_an_api_key() -> None:
    request, _ = build({"messages": HELLO})
    assert lower(request.headers)["authorization"] == "Bearer sk-test-upstream"
    request, _ = build({"messages": HELLO}, dataclasses.replace(TARGET, api_key=""))
    assert "authorization" not in lower(request.headers)


@pytest.mark.parametrize(
    ("endpoint", "data", "url"),
    [
        ("chat", {"messages": HELLO}, "http://127.0.0.1:1234/v1/chat/completions"),
        ("completions", {"prompt": "Say hi"}, "http://127.0.0.1:1234/v1/completions"),
        ("embeddings", {"input": "hi"}, "http://127.0.0.1:1234/v1/embeddings"),
    ],
)
def test_each_endpoint_has_its_path(endpoint: str, data: JSONDict, url: str) -> None:
    target = dataclasses.replace(TARGET, base_url="http://127.0.0.1:1234/v1/")
    request, _ = build(data, target, endpoint=endpoint, stream=False)
    assert str(request.url) == url


def test_unknown_endpoint_is_unsupported() -> None:
    with pytest.raises(GatewayError) as caught:
        build({"prompt": "a cat"}, endpoint="images", stream=False)
    assert (caught.value.status, caught.value.code) == (400, "unsupported_endpoint")


def test_parse_response_reads_usage_and_text() -> None:
    data = {
        "id": "chatcmpl-C3xRaTq0", "object": "chat.completion", "created": 1754915400, "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help?", "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1030, "completion_tokens": 7, "total_tokens": 1037,
                  "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0}},
    }
    completion = OpenAICompatibleProvider().parse_response(TARGET, chat(stream=False), data)
    assert completion.payload == {**data, "model": "gpt-4o-mini"}
    assert completion.text == "Hello! How can I help?"
    assert completion.usage is not None and dataclasses.astuple(completion.usage) == (1030, 7, 1024, 0)


def test_parse_response_reads_legacy_completions_and_missing_usage() -> None:
    data = {"object": "text_completion", "choices": [{"index": 0, "text": "Hi", "finish_reason": "stop"},
                                                      {"index": 1, "text": " there", "finish_reason": "stop"}]}
    completion = OpenAICompatibleProvider().parse_response(TARGET, chat(endpoint="completions", stream=False), data)
    assert (completion.text, completion.usage) == ("Hi there", None)


def test_parse_response_reads_embedding_usage() -> None:
    data = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    completion = OpenAICompatibleProvider().parse_response(TARGET, chat(endpoint="embeddings", stream=False), data)
    assert completion.text == ""
    assert completion.usage is not None and dataclasses.astuple(completion.usage) == (3, 0, 0, 0)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_loads(db: None, preset: str) -> None:
    provider = Provider(name=f"{preset}-upstream", kind="openai_compatible", preset=preset)
    quirks = provider.quirks()
    assert set(quirks) <= KNOWN_QUIRKS
    assert isinstance(quirks.get("stream_usage", True), bool)
    renames = quirks.get("renames", {})
    assert isinstance(renames, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in renames.items())
    url = provider.resolved_base_url()
    if preset == "custom":
        assert url == ""
        with pytest.raises(ValidationError) as caught:
            provider.full_clean()
        assert "base_url" in caught.value.message_dict
        provider.base_url = "https://llm.internal.example/v1"
    else:
        URLValidator(schemes=["http", "https"])(url)
        assert urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc
    provider.full_clean()


def test_a_chunk_reads_the_same_whatever_its_numbers_and_carries_what_it_parsed() -> None:
    translate = OpenAICompatibleProvider().stream_translator(TARGET, chat())
    plain = '{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
    [chunk] = translate(plain)
    assert chunk.text == "Hi" and chunk.parsed is not None and chunk.parsed["choices"][0]["delta"]["content"] == "Hi"
    # orjson refuses NaN and integers past 64 bits; such a chunk still reads as the standard library reads it.
    odd = ('{"id":"c2","model":"m","logprobs":NaN,"seed":' + str(2**70) +
           ',"choices":[{"index":0,"delta":{"content":"there"},"finish_reason":"stop"}]}')
    [chunk] = translate(odd)
    assert chunk.text == "there" and chunk.finished and chunk.parsed is not None and chunk.parsed["seed"] == 2**70
