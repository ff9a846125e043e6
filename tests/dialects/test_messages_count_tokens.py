"""POST /v1/messages/count_tokens: the budget gate's count of a Messages request's input, with a key, no provider
call and no ledger row; failures in Anthropic's envelope."""

from __future__ import annotations

import json
from typing import Any

import anthropic.types
import pytest

from accounts.models import ApiKey
from billing.models import UsageRecord
from proxy import routing, sizing
from proxy.dialects.messages import parse_request
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..proxy.v1_client import AsgiReply, asgi
from .dialect_checks import COUNT_TOKENS, assert_anthropic_error

WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def demo(alice: Party) -> Party:
    ensure_demo_route()
    routing.invalidate()
    return alice


def count(data: Any, headers: dict[str, str]) -> AsgiReply:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return asgi(COUNT_TOKENS, chunks=[raw],
                headers={"content-type": "application/json", "content-length": str(len(raw)), **headers})


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "demo", "messages": [{"role": "user", "content": "Hello, how are you today?"}], **fields}


def tokens_of(reply: AsgiReply) -> int:
    assert reply.status == 200, reply.content
    answer = reply.json()
    anthropic.types.MessageTokensCount.model_validate(answer)
    assert list(answer) == ["input_tokens"]
    return int(answer["input_tokens"])


def test_the_count_is_the_budget_gates_and_grows_with_the_prompt(demo: Party) -> None:
    data = body()
    counted = tokens_of(count(data, {"x-api-key": demo.secret}))
    assert counted == sizing.worst_case(parse_request(data, counting=True), "demo").prompt_tokens > 0
    with_system = tokens_of(count(body(system="You answer in one short sentence, in French."), {"x-api-key": demo.secret}))
    with_tools = tokens_of(count(body(tools=[WEATHER], tool_choice={"type": "auto"}), demo.auth))
    assert with_system > counted and with_tools > counted
    longer = body(messages=[{"role": "user", "content": "word " * 1000}])
    assert tokens_of(count(longer, demo.auth)) >= 1000


def test_no_provider_is_asked_and_no_row_is_written(demo: Party) -> None:
    assert tokens_of(count(body(max_tokens=100, stream=True), demo.auth)) > 0  # both allowed, neither needed
    assert UsageRecord.objects.count() == 0


def test_a_large_body_is_counted_too(demo: Party) -> None:
    large = body(messages=[{"role": "user", "content": "lorem ipsum " * 30_000}])  # past LARGE_BODY_BYTES
    assert tokens_of(count(large, demo.auth)) >= 30_000


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "tg-nobody-000000"}], ids=["no-key", "unknown-key"])
def test_a_key_is_required(demo: Party, headers: dict[str, str]) -> None:
    reply = count(body(), headers)
    assert_anthropic_error(reply.status, reply.headers, reply.content, 401)


@pytest.mark.parametrize(("data", "param"), [
    (b"{", None),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "demo"}, "messages"),
    (body(messages=[{"role": "user", "content": [{"type": "image"}]}]), "messages[0].content[0].source"),
    (body(max_tokens=0), "max_tokens"),
    (body(tools=[{"name": "f"}]), "tools[0].input_schema"),
    (body(system=7), "system"),
])
def test_a_bad_body_is_a_400(demo: Party, data: Any, param: str | None) -> None:
    reply = count(data, demo.auth)
    error = assert_anthropic_error(reply.status, reply.headers, reply.content, 400)
    assert error.get("param") == param
    anthropic.types.ErrorResponse.model_validate(reply.json())


def test_the_keys_model_list_applies_and_unknown_models_are_404(demo: Party) -> None:
    ApiKey.objects.filter(pk=demo.key.pk).update(allowed_models=["other"])
    reply = count(body(), demo.auth)
    assert_anthropic_error(reply.status, reply.headers, reply.content, 403)
    reply = count(body(model="no-such-model"), demo.auth)
    assert_anthropic_error(reply.status, reply.headers, reply.content, 404)


def test_only_post(demo: Party) -> None:
    reply = asgi(COUNT_TOKENS, method="GET", headers=demo.auth)
    assert_anthropic_error(reply.status, reply.headers, reply.content, 405)
