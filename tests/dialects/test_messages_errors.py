"""/v1/messages answers every failure in Anthropic's error envelope with Anthropic's status and type, keeping
Tollgate's retry headers; a bad body is a 400 naming the parameter, never a 500. In process, through the lean ASGI
handler that serves /v1 in production."""

from __future__ import annotations

import json
import os
import uuid
from decimal import Decimal
from typing import Any

import anthropic.types
import pytest

from accounts.models import ApiKey, Tenant
from billing.models import Budget, Price, UsageRecord
from proxy import routing
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..proxy.v1_client import AsgiReply, asgi
from .dialect_checks import assert_anthropic_error

URL = "/v1/messages"
HELLO = [{"role": "user", "content": "Hello"}]
TEXT = {"type": "text", "text": "x"}


@pytest.fixture
def demo(alice: Party) -> Party:
    if os.environ.get("REDIS_URL"):
        import redis

        redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()  # rate windows are keyed by key prefix, reused
    ensure_demo_route()
    routing.invalidate()
    return alice


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "demo", "max_tokens": 50, "messages": HELLO, **fields}


def post(data: Any, headers: dict[str, str], path: str = URL, method: str = "POST") -> AsgiReply:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return asgi(path, method=method, chunks=[raw],
                headers={"content-type": "application/json", "content-length": str(len(raw)), **headers})


def error_of(reply: AsgiReply, status: int) -> dict[str, Any]:
    error = assert_anthropic_error(reply.status, reply.headers, reply.content, status)
    if status != 413:  # the SDK's ErrorObject union has no request_too_large, which Anthropic's docs list for 413
        anthropic.types.ErrorResponse.model_validate(reply.json())
    return error


def user(*blocks: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


BAD_BODIES = [
    ("malformed-json", b'{"model": "demo", ', None),
    ("json-array", b"[]", None),
    ("missing-model", {"max_tokens": 5, "messages": HELLO}, "model"),
    ("model-int", body(model=3), "model"),
    ("model-nul", body(model="de\x00mo"), "model"),
    ("missing-max-tokens", {"model": "demo", "messages": HELLO}, "max_tokens"),
    ("max-tokens-zero", body(max_tokens=0), "max_tokens"),
    ("max-tokens-string", body(max_tokens="5"), "max_tokens"),
    ("max-tokens-bool", body(max_tokens=True), "max_tokens"),
    ("max-tokens-too-many", body(max_tokens=10**9), "max_tokens"),
    ("missing-messages", {"model": "demo", "max_tokens": 5}, "messages"),
    ("messages-empty", body(messages=[]), "messages"),
    ("messages-object", body(messages={"role": "user"}), "messages"),
    ("message-string", body(messages=["hi"]), "messages[0]"),
    ("role-system", body(messages=[{"role": "system", "content": "x"}]), "messages[0].role"),
    ("role-missing", body(messages=[{"content": "x"}]), "messages[0].role"),
    ("content-missing", body(messages=[{"role": "user"}]), "messages[0].content"),
    ("content-number", body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    ("block-string", body(messages=[{"role": "user", "content": ["hi"]}]), "messages[0].content[0]"),
    ("block-no-type", body(messages=user({"text": "hi"})), "messages[0].content[0].type"),
    ("text-not-string", body(messages=user({"type": "text", "text": 5})), "messages[0].content[0].text"),
    ("image-no-source", body(messages=user(TEXT, {"type": "image"})), "messages[0].content[1].source"),
    ("image-bad-source", body(messages=user({"type": "image", "source": {"type": "ftp"}})),
     "messages[0].content[0].source.type"),
    ("image-no-data", body(messages=user({"type": "image", "source": {"type": "base64", "media_type": "image/png"}})),
     "messages[0].content[0].source.data"),
    ("tool-use-no-input", body(messages=[*HELLO, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f"}]}]), "messages[1].content[0].input"),
    ("tool-result-no-id", body(messages=user({"type": "tool_result", "content": "4"})),
     "messages[0].content[0].tool_use_id"),
    ("tool-result-bad-block", body(messages=user({"type": "tool_result", "tool_use_id": "t",
                                                  "content": [{"type": "tool_use"}]})),
     "messages[0].content[0].content[0].type"),
    ("thinking-no-text", body(messages=[*HELLO, {"role": "assistant", "content": [{"type": "thinking"}]}]),
     "messages[1].content[0].thinking"),
    ("system-number", body(system=5), "system"),
    ("system-image-block", body(system=[{"type": "image"}]), "system[0].type"),
    ("tools-object", body(tools={"name": "f"}), "tools"),
    ("tool-no-name", body(tools=[{"input_schema": {}}]), "tools[0].name"),
    ("tool-no-schema", body(tools=[{"name": "f"}]), "tools[0].input_schema"),
    ("tool-choice-string", body(tool_choice="auto"), "tool_choice"),
    ("tool-choice-unknown", body(tool_choice={"type": "sometimes"}), "tool_choice.type"),
    ("tool-choice-no-name", body(tool_choice={"type": "tool"}), "tool_choice.name"),
    ("stop-sequences-string", body(stop_sequences="END"), "stop_sequences"),
    ("stop-sequence-number", body(stop_sequences=["a", 1]), "stop_sequences[1]"),
    ("temperature-high", body(temperature=1.5), "temperature"),
    ("top-p-string", body(top_p="x"), "top_p"),
    ("top-k-negative", body(top_k=-1), "top_k"),
    ("stream-string", body(stream="yes"), "stream"),
    ("metadata-list", body(metadata=[]), "metadata"),
    ("metadata-user-number", body(metadata={"user_id": 5}), "metadata.user_id"),
    ("thinking-string", body(thinking="on"), "thinking"),
]


@pytest.mark.parametrize(("data", "param"), [pytest.param(d, p, id=i) for i, d, p in BAD_BODIES])
def test_bad_bodies_are_400s_naming_the_parameter(demo: Party, data: Any, param: str | None) -> None:
    before = UsageRecord.objects.count()
    reply = post(data, {"x-api-key": demo.secret})
    error = error_of(reply, 400)
    assert error.get("param") == param
    assert UsageRecord.objects.count() == before + 1  # a rejected request leaves its row too
    row = UsageRecord.objects.get(request_id=uuid.UUID(reply["x-request-id"]))
    assert (row.endpoint, row.end_reason, row.status_code, row.cost_picos) == ("messages", "rejected", 400, 0)


def test_a_key_in_x_api_key_or_bearer_is_accepted(demo: Party) -> None:
    for headers in ({"x-api-key": demo.secret}, demo.auth):
        reply = post(body(), headers)
        assert reply.status == 200, reply.content
        anthropic.types.Message.model_validate(reply.json())


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "tg-nobody-0000000000"}, {"x-api-key": "sk-ant-api03-abc"}],
                         ids=["no-key", "unknown-key", "anthropic-key"])
def test_missing_or_wrong_keys_are_401_authentication_errors(demo: Party, headers: dict[str, str]) -> None:
    reply = post(body(), headers)
    error_of(reply, 401)
    assert UsageRecord.objects.count() == 0  # an unauthenticated request belongs to no tenant


def test_a_deactivated_tenant_is_403(demo: Party) -> None:
    Tenant.objects.filter(pk=demo.tenant.pk).update(is_active=False)
    error_of(post(body(), {"x-api-key": demo.secret}), 403)


def test_a_model_the_key_may_not_use_is_403_and_an_unknown_one_404(demo: Party) -> None:
    ApiKey.objects.filter(pk=demo.key.pk).update(allowed_models=["something-else"])
    error = error_of(post(body(), {"x-api-key": demo.secret}), 403)
    assert error["param"] == "model"
    error = error_of(post(body(model="no-such-model"), {"x-api-key": demo.secret}), 404)
    assert error["param"] == "model"


def test_a_body_over_the_limit_is_413(demo: Party, settings: Any) -> None:
    settings.TOLLGATE_MAX_BODY_BYTES = 2000
    error_of(post(body(messages=[{"role": "user", "content": "x" * 5000}]), {"x-api-key": demo.secret}), 413)


def test_an_exhausted_budget_is_a_429_the_sdk_does_not_retry(demo: Party) -> None:
    Price.objects.create(model="demo", input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    Budget.objects.create(tenant=demo.tenant, amount=Decimal("0.000001"), period="month")
    reply = post(body(), {"x-api-key": demo.secret})
    error_of(reply, 429)
    assert reply["x-should-retry"] == "false"


def test_a_rate_limit_is_a_429_with_retry_after(demo: Party) -> None:
    ApiKey.objects.filter(pk=demo.key.pk).update(requests_per_minute=1)
    assert post(body(), {"x-api-key": demo.secret}).status == 200
    reply = post(body(), {"x-api-key": demo.secret})
    error_of(reply, 429)
    assert int(reply["retry-after"]) >= 1


def test_get_is_refused_in_the_envelope(demo: Party) -> None:
    reply = asgi(URL, method="GET", headers={"x-api-key": demo.secret})
    assert reply["allow"] == "POST"
    assert_anthropic_error(reply.status, reply.headers, reply.content, 405)


def test_paths_under_messages_answer_in_anthropics_envelope_and_others_in_openais(demo: Party) -> None:
    reply = asgi("/v1/messages/batches", method="GET", headers={"x-api-key": demo.secret})
    assert error_of(reply, 404)["type"] == "not_found_error"
    reply = asgi("/v1/messagesx", method="GET", headers={"x-api-key": demo.secret})
    assert reply.status == 404 and set(reply.json()) == {"error"}  # not a Messages path: OpenAI's envelope
    reply = asgi(URL, chunks=[json.dumps(body()).encode()], headers={"x-api-key": demo.secret}, query=b"beta=\xff")
    error_of(reply, 400)  # a query string that is not UTF-8: refused before any view runs


def test_a_failure_outside_the_relay_is_a_500_in_the_envelope(demo: Party, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy import count_tokens, views

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(views, "relay", broken)
    monkeypatch.setattr(count_tokens, "count", broken)
    for path in (URL, "/v1/messages/count_tokens"):
        reply = post(body(), {"x-api-key": demo.secret}, path=path)
        assert reply.status == 500 and reply.json()["type"] == "error", reply.content
        anthropic.types.ErrorResponse.model_validate(reply.json())
        assert reply.json()["error"]["type"] == "api_error" and "a bug" not in reply.content.decode()
