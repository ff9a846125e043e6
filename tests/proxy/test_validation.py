from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import Client, override_settings

from billing.models import UsageRecord
from proxy.models import ModelRoute
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..factories import make_key

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def demo(db: None) -> ModelRoute:
    return ensure_demo_route()


def post(client: Client, url: str, body: Any, headers: dict[str, str]) -> HttpResponse:
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(url, data=content, content_type="application/json", headers=headers)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "demo", "messages": HELLO, **fields}


def assert_envelope(response: HttpResponse, status: int, param: str | None, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert not response.content.lstrip().startswith(b"<")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert error["message"] and "Traceback" not in error["message"]
    return error


def assert_one_rejected_row(response: HttpResponse, before: int, status: int) -> UsageRecord:
    assert UsageRecord.objects.count() == before + 1
    row = UsageRecord.objects.get(request_id=uuid.UUID(response["x-request-id"]))
    assert (row.end_reason, row.status_code) == ("rejected", status)
    assert (row.prompt_tokens, row.completion_tokens) == (0, 0)
    return row


@pytest.mark.parametrize(
    ("url", "body", "param", "code"),
    [
        pytest.param(CHAT, '{"model": "demo", "messages": [', None, "invalid_json", id="malformed-json"),
        pytest.param(CHAT, "", None, "invalid_json", id="empty-body"),
        pytest.param(CHAT, b'{"model": "\xff\xfe"}', None, "invalid_json", id="not-utf8"),
        pytest.param(CHAT, json.dumps([chat()]), None, "invalid_json", id="json-array"),
        pytest.param(CHAT, '"demo"', None, "invalid_json", id="json-string"),
        # A deeply nested body makes json.loads raise RecursionError, which is not a ValueError.
        pytest.param(CHAT, "[" * 100_000, None, "invalid_json", id="deeply-nested-json"),
        pytest.param(CHAT, {"messages": HELLO}, "model", "invalid_value", id="missing-model"),
        pytest.param(CHAT, chat(model=None), "model", "invalid_value", id="null-model"),
        pytest.param(CHAT, chat(model=42), "model", "invalid_value", id="model-int"),
        pytest.param(CHAT, chat(model=["demo"]), "model", "invalid_value", id="model-list"),
        pytest.param(CHAT, chat(model=True), "model", "invalid_value", id="model-bool"),
        pytest.param(CHAT, chat(model=""), "model", "invalid_value", id="empty-model"),
        pytest.param(CHAT, chat(model="   "), "model", "invalid_value", id="blank-model"),
        pytest.param(CHAT, {"model": "demo"}, "messages", "invalid_value", id="missing-messages"),
        pytest.param(CHAT, chat(messages="hello"), "messages", "invalid_value", id="messages-string"),
        pytest.param(CHAT, chat(messages={"role": "user", "content": "hi"}), "messages", "invalid_value",
                     id="messages-object"),
        pytest.param(CHAT, chat(messages=[]), "messages", "invalid_value", id="messages-empty"),
        pytest.param(CHAT, chat(messages=["hi"]), "messages[0]", "invalid_value", id="message-not-object"),
        pytest.param(CHAT, chat(messages=[{"content": "hi"}]), "messages[0].role", "invalid_value", id="no-role"),
        pytest.param(CHAT, chat(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role", "invalid_value",
                     id="bad-role"),
        pytest.param(CHAT, chat(messages=[{"role": ["user"], "content": "hi"}]), "messages[0].role", "invalid_value",
                     id="role-list"),
        pytest.param(CHAT, chat(messages=[*HELLO, {"role": "assistant", "content": 42}]), "messages[1].content",
                     "invalid_value", id="content-int"),
        pytest.param(CHAT, chat(messages=[{"role": "user", "content": {"text": "hi"}}]), "messages[0].content",
                     "invalid_value", id="content-object"),
        pytest.param(CHAT, chat(messages=[{"role": "user"}]), "messages[0].content", "invalid_value",
                     id="content-missing"),
        pytest.param(CHAT, chat(stream="true"), "stream", "invalid_value", id="stream-string"),
        pytest.param(CHAT, chat(stream=1), "stream", "invalid_value", id="stream-int"),
        pytest.param(CHAT, chat(stream_options={"include_usage": True}), "stream_options", "invalid_value",
                     id="stream-options-without-stream"),
        pytest.param(CHAT, chat(stream=False, stream_options={"include_usage": True}), "stream_options",
                     "invalid_value", id="stream-options-stream-false"),
        pytest.param(CHAT, chat(stream=True, stream_options="usage"), "stream_options", "invalid_value",
                     id="stream-options-string"),
        pytest.param(CHAT, chat(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage",
                     "invalid_value", id="include-usage-string"),
        pytest.param(CHAT, chat(max_tokens=0), "max_tokens", "invalid_value", id="max-tokens-zero"),
        pytest.param(CHAT, chat(max_tokens=-5), "max_tokens", "invalid_value", id="max-tokens-negative"),
        pytest.param(CHAT, chat(max_tokens="100"), "max_tokens", "invalid_value", id="max-tokens-string"),
        pytest.param(CHAT, chat(max_tokens=1.5), "max_tokens", "invalid_value", id="max-tokens-float"),
        pytest.param(CHAT, chat(max_completion_tokens=0), "max_completion_tokens", "invalid_value",
                     id="max-completion-tokens-zero"),
        pytest.param(CHAT, chat(temperature=2.5), "temperature", "invalid_value", id="temperature-high"),
        pytest.param(CHAT, chat(temperature=-0.1), "temperature", "invalid_value", id="temperature-negative"),
        pytest.param(CHAT, chat(temperature="hot"), "temperature", "invalid_value", id="temperature-string"),
        pytest.param(CHAT, chat(n=17), "n", "invalid_value", id="n-too-large"),
        pytest.param(CHAT, chat(n=0), "n", "invalid_value", id="n-zero"),
        pytest.param(COMPLETIONS, {"model": "demo"}, "prompt", "invalid_value", id="completions-missing-prompt"),
        pytest.param(COMPLETIONS, {"model": "demo", "prompt": 42}, "prompt", "invalid_value",
                     id="completions-prompt-int"),
        pytest.param(COMPLETIONS, {"model": "demo", "prompt": []}, "prompt", "invalid_value",
                     id="completions-prompt-empty"),
        pytest.param(COMPLETIONS, {"prompt": "hi"}, "model", "invalid_value", id="completions-missing-model"),
        pytest.param(EMBEDDINGS, {"model": "demo"}, "input", "invalid_value", id="embeddings-missing-input"),
        pytest.param(EMBEDDINGS, {"model": "demo", "input": {"text": "hi"}}, "input", "invalid_value",
                     id="embeddings-input-object"),
        pytest.param(EMBEDDINGS, {"model": "demo", "input": [{"text": "hi"}]}, "input", "invalid_value",
                     id="embeddings-input-list-of-objects"),
        pytest.param(EMBEDDINGS, "{", None, "invalid_json", id="embeddings-malformed-json"),
    ],
)
def test_invalid_body_is_400_naming_the_param(
    client: Client, alice: Party, demo: ModelRoute, url: str, body: Any, param: str | None, code: str
) -> None:
    before = UsageRecord.objects.count()
    response = post(client, url, body, alice.auth)
    error = assert_envelope(response, 400, param, code)
    assert error["type"] == "invalid_request_error"
    row = assert_one_rejected_row(response, before, 400)
    assert (row.tenant_id, row.key_id, row.error_code) == (alice.tenant.pk, alice.key.pk, code)


def test_unknown_model_is_404(client: Client, alice: Party, demo: ModelRoute) -> None:
    before = UsageRecord.objects.count()
    response = post(client, CHAT, chat(model="no-such-model"), alice.auth)
    assert_envelope(response, 404, "model", "model_not_found")
    row = assert_one_rejected_row(response, before, 404)
    assert row.public_model == "no-such-model"


def test_model_outside_the_keys_allowed_models_is_403(client: Client, alice: Party, demo: ModelRoute) -> None:
    key, secret = make_key(alice.tenant, name="only other", allowed_models=["other"])
    before = UsageRecord.objects.count()
    response = post(client, CHAT, chat(), {"Authorization": f"Bearer {secret}"})
    assert_envelope(response, 403, "model", "model_not_allowed")
    assert assert_one_rejected_row(response, before, 403).key_id == key.pk


@override_settings(TOLLGATE_MAX_BODY_BYTES=2048, DATA_UPLOAD_MAX_MEMORY_SIZE=2048)
def test_oversized_body_is_413(client: Client, alice: Party, demo: ModelRoute) -> None:
    body = chat(messages=[{"role": "user", "content": "x" * 4096}])
    before = UsageRecord.objects.count()
    response = post(client, CHAT, body, alice.auth)
    assert_envelope(response, 413, None, "request_too_large")
    assert_one_rejected_row(response, before, 413)


@override_settings(TOLLGATE_MAX_BODY_BYTES=2048, DATA_UPLOAD_MAX_MEMORY_SIZE=2048)
def test_body_at_the_limit_is_accepted(client: Client, alice: Party, demo: ModelRoute) -> None:
    body = chat(messages=[{"role": "user", "content": "x"}])
    padding = 2048 - len(json.dumps(body)) - len(', "user": ""')
    response = post(client, CHAT, {**body, "user": "u" * padding}, alice.auth)
    assert response.status_code == 200, response.content


def test_get_is_405(client: Client, alice: Party, demo: ModelRoute) -> None:
    before = UsageRecord.objects.count()
    response = client.get(CHAT, headers=alice.auth)
    assert_envelope(response, 405, None, "method_not_allowed")
    assert_one_rejected_row(response, before, 405)


def test_valid_demo_chat_is_200_with_request_id_and_overhead(client: Client, alice: Party, demo: ModelRoute) -> None:
    before = UsageRecord.objects.count()
    response = post(client, CHAT, chat(max_tokens=50, temperature=0.5, n=1), alice.auth)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json()["choices"][0]["message"]["content"].startswith("Hello from Tollgate's demo model!")
    assert UsageRecord.objects.count() == before + 1
    row = UsageRecord.objects.get(tenant=alice.tenant)
    assert response["x-request-id"] == row.request_id.hex
    assert float(response["x-tollgate-overhead-ms"]) >= 0
    assert (row.end_reason, row.status_code, row.public_model, row.endpoint) == ("complete", 200, "demo", "chat")
    assert row.prompt_tokens > 0 and row.completion_tokens > 0
