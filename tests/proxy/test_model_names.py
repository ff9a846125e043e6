"""Answers name the model the client asked for (its route), whatever the upstream calls it, streamed or not, on every
kind of provider; a usage chunk Tollgate makes up carries the stream's own id and model."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client

from proxy.models import ModelRoute, Provider
from proxy.providers.azure import AzureOpenAIProvider
from proxy.providers.base import ApiRequest, Target
from proxy.providers.compatible import PRESETS, ModelName, OpenAICompatibleProvider

from ..conftest import Party
from ..factories import make_route
from .retrying import chat, deploy, healthy  # noqa: F401 (fixture)

HELLO = [{"role": "user", "content": "Hi"}]
TARGET = Target(public_model="house-model", deployment_id=1, provider_name="openai", kind="openai_compatible",
                base_url="https://api.openai.com/v1", upstream_model="gpt-4o-mini", api_key="sk-test",
                options=dict(PRESETS["openai"]))


def streamed(party: Party, model: str, **fields: Any) -> list[dict[str, Any]]:
    """The JSON payloads of a streamed chat answer, in order ([DONE] left out)."""
    async def request() -> bytes:
        body = {"model": model, "stream": True, "messages": HELLO, **fields}
        response = await AsyncClient().post("/v1/chat/completions", json.dumps(body), content_type="application/json",
                                            headers=party.auth)
        assert response.status_code == 200
        return b"".join([part async for part in response.streaming_content])

    lines = async_to_sync(request)().decode().splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def test_compatible_answer_names_the_clients_model(client: Client, alice: Party, mock_upstream_url: str) -> None:
    deploy(mock_upstream_url, "house-model", "mock")  # the mock calls every answer "mock"
    response = chat(client, alice, "house-model")
    assert response.status_code == 200
    assert response.json()["model"] == "house-model"
    assert response.json()["choices"][0]["message"]["content"] == "Hello from the mock."


def test_compatible_stream_names_the_clients_model_in_every_chunk(alice: Party, mock_upstream_url: str) -> None:
    deploy(mock_upstream_url, "house-model", "mock")
    payloads = streamed(alice, "house-model", stream_options={"include_usage": True})
    assert len(payloads) > 3 and {p["model"] for p in payloads} == {"house-model"}
    assert payloads[-1]["usage"]["completion_tokens"] > 0  # the upstream's own usage chunk, renamed too


def test_made_up_usage_chunk_has_the_streams_id_and_model(alice: Party, mock_upstream_url: str) -> None:
    deploy(mock_upstream_url, "quiet-model", "mock-nousage")  # never reports usage: Tollgate estimates it
    payloads = streamed(alice, "quiet-model", stream_options={"include_usage": True})
    *answer, usage = payloads
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    assert (usage["id"], usage["model"], usage["created"]) == (answer[0]["id"], "quiet-model", answer[0]["created"])
    assert {p["id"] for p in answer} == {"chatcmpl-mock"}


def test_anthropic_answers_name_the_clients_model(client: Client, alice: Party, mock_upstream_url: str) -> None:
    deploy(mock_upstream_url, "house-claude", "mock", kind="anthropic")
    response = chat(client, alice, "house-claude")
    assert response.status_code == 200 and response.json()["model"] == "house-claude"
    payloads = streamed(alice, "house-claude")
    assert payloads and {p["model"] for p in payloads} == {"house-claude"}


def test_demo_answers_name_the_clients_model(client: Client, alice: Party, demo: ModelRoute) -> None:
    route = make_route("demo-2", upstream_model="demo", kind="demo", provider_name="demo")
    for model in (demo.name, route.name):
        assert chat(client, alice, model).json()["model"] == model
        payloads = streamed(alice, model)
        assert payloads and {p["model"] for p in payloads} == {model}


def test_azure_answers_name_the_clients_model() -> None:
    target = dataclasses.replace(TARGET, kind="azure", base_url="https://res.openai.azure.com",
                                 upstream_model="prod-gpt4o", options=Provider(kind="azure").quirks())
    data = {"id": "chatcmpl-Az1", "object": "chat.completion", "model": "gpt-4o-2024-11-20",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
            "prompt_filter_results": [], "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}}
    body = ApiRequest(endpoint="chat", model="house-model", data={"messages": HELLO})
    assert AzureOpenAIProvider().parse_response(target, body, data).payload["model"] == "house-model"
    translate = AzureOpenAIProvider().stream_translator(target, body)
    # Azure's first chunk holds only the prompt's content filter results, with an empty id and model.
    first = '{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[]}'
    chunk = '{"choices":[{"delta":{"content":"Hi"},"finish_reason":null,"index":0}],"id":"chatcmpl-Az1",' \
            '"model":"gpt-4o-2024-11-20","object":"chat.completion.chunk","system_fingerprint":"fp_1"}'
    for payload in (first, chunk):
        [translated] = translate(payload)
        assert translated.data is not None and json.loads(translated.data)["model"] == "house-model"


def test_a_chunk_that_already_names_the_clients_model_is_passed_on_as_it_is() -> None:
    payload = '{"id":"x","model":"house-model","choices":[{"index":0,"delta":{"content":"hi"}}]}'
    [chunk] = OpenAICompatibleProvider().stream_translator(TARGET, ApiRequest("chat", "house-model", {}))(payload)
    assert chunk.data == payload.encode()
    data = {"id": "x", "model": "house-model", "choices": []}
    completion = OpenAICompatibleProvider().parse_response(TARGET, ApiRequest("chat", "house-model", {}), data)
    assert completion.payload is data  # unchanged: its bytes may be sent as they came


@pytest.mark.parametrize("public", ['team "a"/models\\ü', "plain", "emoji 🦙"])
@pytest.mark.parametrize("upstream", [
    '{"id":"1","model":"up/stream","choices":[{"index":0,"delta":{"content":"\\"model\\":\\"up/stream\\""}}]}',
    '{"id":"1","model":"up\\/stream","choices":[]}',  # the upstream escaped its slash: found by parsing
    '{"id": "1", "model": "up/stream", "choices": []}',
    '{"id":"1","model":"\\u00fcp","choices":[]}',
])
def test_renaming_is_exact_whatever_either_name_holds(public: str, upstream: str) -> None:
    rename = ModelName(public)
    data = json.loads(upstream)
    for _ in range(2):  # the second chunk of a stream takes the remembered path
        renamed = json.loads(rename.apply(upstream, data))
        assert renamed == {**data, "model": public}


def test_non_streamed_answer_under_another_name_is_not_sent_as_received(client: Client, alice: Party,
                                                                          mock_upstream_url: str) -> None:
    deploy(mock_upstream_url, "house-model", "mock")
    response = chat(client, alice, "house-model")
    assert b'"model": "mock"' not in response.content and b'"model":"mock"' not in response.content
