"""Azure OpenAI: deployment URLs with an api-version and an api-key header, OpenAI's formats both ways, exact usage in
streams, and the Responses API on Azure's v1 path; end to end against a local stand-in for an Azure resource."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ValidationError
from django.test import AsyncClient, Client

from billing.models import UsageRecord
from proxy import dialects
from proxy.models import Deployment, ModelRoute, Provider
from proxy.providers.azure import DEFAULT_API_VERSION, AzureOpenAIProvider, request_for
from proxy.providers.base import RESPONSES, ApiRequest, JSONDict, Target

from ..conftest import Party
from ..live import serve_app
from .retrying import chat, healthy, row_of  # noqa: F401 (fixture)

KEY = "azure-key-0123456789abcdef"
HELLO = [{"role": "user", "content": "Hi"}]
TARGET = Target(public_model="gpt-4o", deployment_id=1, provider_name="azure", kind="azure",
                base_url="https://contoso.openai.azure.com", upstream_model="prod-gpt4o", api_key=KEY,
                options=Provider(kind="azure", api_version="2025-04-01-preview").quirks())
seen: list[dict[str, Any]] = []  # what the stand-in received: path, query, headers, body


def answer(content: str) -> JSONDict:
    return {"id": "chatcmpl-Az9", "object": "chat.completion", "created": 1754915220, "model": "gpt-4o-2024-11-20",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content},
                         "content_filter_results": {}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
                      "prompt_tokens_details": {"cached_tokens": 0}}}


def stream_body(include_usage: bool) -> bytes:
    base = {"id": "chatcmpl-Az9", "object": "chat.completion.chunk", "created": 1754915220,
            "model": "gpt-4o-2024-11-20", "system_fingerprint": "fp_b705f0c291"}
    events: list[JSONDict] = [
        # Azure opens with the prompt's content filter results: no id, no model, no choices.
        {"choices": [], "created": 0, "id": "", "model": "", "object": "",
         "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False}}}]},
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        *({**base, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None, "content_filter_results": {}}]}
          for t in ("Hello", " there", "!")),
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    if include_usage:
        events.append({**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
    return b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events) + \
        b"data: [DONE]\n\n"


async def azure(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A stand-in for an Azure OpenAI resource with one deployment, prod-gpt4o."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    data = json.loads(body or b"{}")
    seen.append({"path": scope["path"], "query": parse_qs(scope["query_string"].decode()), "headers": headers,
                 "body": data})

    async def reply(status: int, content: bytes, kind: bytes = b"application/json", extra: tuple[Any, ...] = ()) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind), *extra]})
        await send({"type": "http.response.body", "body": content})

    if headers.get("api-key") != KEY:
        error = {"error": {"code": "401", "message": f"Access denied due to invalid subscription key {KEY[:4]}."}}
        return await reply(401, json.dumps(error).encode())
    if scope["path"] == "/openai/v1/responses":
        response = {"id": "resp_az", "object": "response", "created_at": 1754915220, "status": "completed",
                    "model": data.get("model"), "output": [
                        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                         "content": [{"type": "output_text", "text": "Hi from Azure.", "annotations": []}]}],
                    "usage": {"input_tokens": 7, "output_tokens": 4, "total_tokens": 11,
                              "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}}
        return await reply(200, json.dumps(response).encode())
    if not scope["path"].startswith("/openai/deployments/prod-gpt4o/"):
        return await reply(404, b'{"error": {"code": "DeploymentNotFound", "message": "The API deployment does not exist."}}')
    if data.get("messages", [{}])[-1].get("content") == "slow down":
        return await reply(429, b'{"error": {"code": "429", "message": "Rate limit is exceeded."}}',
                           extra=((b"retry-after", b"7"),))
    if data.get("stream"):
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return await reply(200, stream_body(include_usage), b"text/event-stream")
    return await reply(200, json.dumps(answer("Hello there!")).encode())


@pytest.fixture(scope="module")
def azure_url() -> Iterator[str]:
    with serve_app(azure) as url:
        yield url


@pytest.fixture
def routed(db: None, azure_url: str) -> ModelRoute:
    seen.clear()
    provider = Provider(name="contoso", kind="azure", base_url=azure_url + "/openai/", api_version="2024-10-21")
    provider.set_credential(KEY)
    provider.full_clean()
    provider.save()
    route = ModelRoute.objects.create(name="gpt-4o")
    Deployment.objects.create(route=route, provider=provider, upstream_model="prod-gpt4o")
    return route


def build(data: JSONDict, target: Target = TARGET, *, endpoint: str = "chat",
          stream: bool = False) -> tuple[str, JSONDict, dict[str, str]]:
    request = AzureOpenAIProvider().build_request(target, ApiRequest(endpoint, "gpt-4o", data, stream=stream))
    return request.url, request.json(), {k.lower(): v for k, v in request.headers.items()}


def test_chat_goes_to_the_deployment_with_the_api_version_and_key() -> None:
    url, payload, headers = build({"messages": HELLO, "stream": True}, stream=True)
    assert url == "https://contoso.openai.azure.com/openai/deployments/prod-gpt4o/chat/completions" \
                  "?api-version=2025-04-01-preview"
    assert headers["api-key"] == KEY and "authorization" not in headers
    assert payload["stream_options"] == {"include_usage": True} and payload["messages"] == HELLO


@pytest.mark.parametrize(("endpoint", "data", "path"), [
    ("completions", {"prompt": "Hi"}, "/completions"), ("embeddings", {"input": "Hi"}, "/embeddings")])
def test_each_endpoint_has_its_deployment_path(endpoint: str, data: JSONDict, path: str) -> None:
    url, _, _ = build(data, endpoint=endpoint)
    assert url.split("?")[0] == f"https://contoso.openai.azure.com/openai/deployments/prod-gpt4o{path}"


def test_a_blank_api_version_is_the_default_and_names_are_escaped() -> None:
    target = dataclasses.replace(TARGET, upstream_model="team a/b", base_url="https://contoso.openai.azure.com/openai/",
                                 options=Provider(kind="azure").quirks())
    url, _, _ = build({"messages": HELLO}, target)
    assert url == f"https://contoso.openai.azure.com/openai/deployments/team%20a%2Fb/chat/completions" \
                  f"?api-version={DEFAULT_API_VERSION}"


def test_responses_go_to_the_v1_api_with_the_deployment_as_model() -> None:
    request = request_for(TARGET, "/responses", {"model": "gpt-4o", "input": "Hi", "store": False})
    assert request.url == "https://contoso.openai.azure.com/openai/v1/responses"
    assert request.json() == {"model": "prod-gpt4o", "input": "Hi", "store": False}
    assert request.headers["api-key"] == KEY
    assert type(dialects.native(TARGET, RESPONSES)).__name__ == "ResponsesProvider"


def test_an_azure_provider_needs_its_endpoint_and_a_well_formed_api_version(db: None) -> None:
    with pytest.raises(ValidationError) as caught:
        Provider(name="azure-a", kind="azure").full_clean()
    assert "endpoint" in caught.value.message_dict["base_url"][0]
    with pytest.raises(ValidationError) as caught:
        Provider(name="azure-b", kind="azure", base_url="https://x.openai.azure.com", api_version="v2").full_clean()
    assert "api_version" in caught.value.message_dict
    Provider(name="azure-c", kind="azure", base_url="https://x.openai.azure.com", api_version="preview").full_clean()


def test_a_chat_answer_end_to_end(client: Client, alice: Party, routed: ModelRoute) -> None:
    response = chat(client, alice, "gpt-4o")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == "gpt-4o" and body["choices"][0]["message"]["content"] == "Hello there!"
    [sent] = seen
    assert sent["path"] == "/openai/deployments/prod-gpt4o/chat/completions"
    assert sent["query"] == {"api-version": ["2024-10-21"]} and sent["body"]["model"] == "prod-gpt4o"
    row = row_of(response)
    assert (row.provider, row.upstream_model, row.prompt_tokens, row.completion_tokens) == ("contoso", "prod-gpt4o", 9, 3)
    assert row.usage_source == UsageRecord.Source.PROVIDER


def test_a_stream_end_to_end_bills_azures_own_usage(alice: Party, routed: ModelRoute) -> None:
    async def request() -> tuple[str, bytes]:
        response = await AsyncClient().post(
            "/v1/chat/completions", json.dumps({"model": "gpt-4o", "stream": True, "messages": HELLO}),
            content_type="application/json", headers=alice.auth)
        return response["x-request-id"], b"".join([part async for part in response.streaming_content])

    request_id, content = async_to_sync(request)()
    payloads = [json.loads(line[6:]) for line in content.decode().splitlines() if line.startswith("data: {")]
    assert "".join(c["delta"].get("content", "") for p in payloads for c in p["choices"]) == "Hello there!"
    assert {p["model"] for p in payloads} == {"gpt-4o"}
    assert all("usage" not in p for p in payloads)  # asked for by Tollgate, not by the client: stripped
    assert content.endswith(b"data: [DONE]\n\n")
    assert seen[0]["body"]["stream_options"] == {"include_usage": True}
    row = UsageRecord.objects.get(request_id=request_id)
    assert (row.prompt_tokens, row.completion_tokens, row.usage_source) == (9, 3, UsageRecord.Source.PROVIDER)


def test_azure_errors_map_without_echoing_the_key(client: Client, alice: Party, routed: ModelRoute) -> None:
    response = chat(client, alice, "gpt-4o", messages=[{"role": "user", "content": "slow down"}])
    assert response.status_code == 429 and response["Retry-After"] == "7"
    provider = Provider.objects.get(name="contoso")
    provider.set_credential("wrong-key")
    provider.save()  # saving drops the routing table
    response = chat(client, alice, "gpt-4o")
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_auth_failed"
    assert KEY[:4] not in response.content.decode() and "wrong-key" not in response.content.decode()


def test_responses_are_relayed_natively_end_to_end(client: Client, alice: Party, routed: ModelRoute) -> None:
    response = client.post("/v1/responses", json.dumps({"model": "gpt-4o", "input": "Hi"}),
                           content_type="application/json", headers=alice.auth)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == "gpt-4o" and body["output"][0]["content"][0]["text"] == "Hi from Azure."
    [sent] = seen
    assert sent["path"] == "/openai/v1/responses" and sent["query"] == {} and sent["body"]["model"] == "prod-gpt4o"
    row = row_of(response)
    assert (row.endpoint, row.prompt_tokens, row.completion_tokens) == ("responses", 7, 4)
