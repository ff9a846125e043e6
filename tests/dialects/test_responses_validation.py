"""Bad Responses API bodies: a 400 in OpenAI's envelope naming the parameter, never a 500, whole or streamed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from billing.models import UsageRecord
from proxy.services import ensure_demo_route

from ..conftest import Party

VALID: dict[str, Any] = {"model": "demo", "input": "Hi"}
FUNCTION = {"type": "function", "name": "f"}
BAD: list[tuple[dict[str, Any], str]] = [
    ({"model": None}, "model"),
    ({"model": 5}, "model"),
    ({"model": "de\x00mo"}, "model"),
    ({"model": "  "}, "model"),
    ({"input": None}, "input"),
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": ["Hi"]}, "input[0]"),
    ({"input": [{"content": "Hi"}]}, "input[0].type"),
    ({"input": [{"role": "robot", "content": "Hi"}]}, "input[0].role"),
    ({"input": [{"role": "user"}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"input": [{"role": "user", "content": [{"text": "x"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png", "detail": "max"}]}]},
     "input[0].content[0].detail"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}, "input[0].arguments"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
    ({"input": [{"type": 7}]}, "input[0].type"),
    ({"input": [{"type": "", "content": "Hi"}]}, "input[0].type"),
    ({"input": [{"type": ""}]}, "input[0].type"),
    ({"instructions": ["Be brief."]}, "instructions"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": ["f"]}, "tools[0]"),
    ({"tools": [{"name": "f"}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "name": "f", "parameters": "{}"}]}, "tools[0].parameters"),
    ({"tools": [FUNCTION], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [FUNCTION], "tool_choice": {"type": "function"}}, "tool_choice.name"),
    ({"tools": [FUNCTION], "tool_choice": {"type": "allowed_tools", "mode": "maybe", "tools": []}}, "tool_choice.mode"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": 10**9}, "max_output_tokens"),
    ({"max_output_tokens": "10"}, "max_output_tokens"),
    ({"max_output_tokens": True}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": -0.5}, "top_p"),
    ({"text": "json"}, "text"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"previous_response_id": 12}, "previous_response_id"),
    ({"previous_response_id": ""}, "previous_response_id"),
    ({"store": "yes"}, "store"),
    ({"stream": "yes"}, "stream"),
    ({"background": 1}, "background"),
    ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k": 1}}, "metadata.k"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ({"user": 5}, "user"),
    ({"reasoning": "high"}, "reasoning"),
    ({"reasoning": {"effort": 3}}, "reasoning.effort"),
    ({"reasoning": {"summary": ["auto"]}}, "reasoning.summary"),
    ({"truncation": "sometimes"}, "truncation"),
    ({"include": "reasoning.encrypted_content"}, "include"),
    ({"conversation": "conv_1"}, "conversation"),
]


@pytest.fixture(autouse=True)
def demo(db: None) -> None:
    ensure_demo_route()


@pytest.mark.parametrize(("fields", "param"), BAD, ids=[f"{i}-{p}" for i, (_, p) in enumerate(BAD)])
def test_a_bad_body_is_a_400_naming_the_parameter(client: Client, alice: Party, fields: dict[str, Any],
                                                  param: str) -> None:
    for stream in (False, True):
        body = {**VALID, "stream": stream, **fields}
        if fields.get("model", "") is None or fields.get("input", "") is None:
            body = {name: value for name, value in body.items() if value is not None}
        response = client.post("/v1/responses", json.dumps(body), content_type="application/json", headers=alice.auth)
        assert response.status_code == 400, (fields, response.content)
        assert response["Content-Type"] == "application/json"
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
        assert error["type"] == "invalid_request_error" and error["message"]
    assert UsageRecord.objects.filter(tenant=alice.tenant, endpoint="responses", status_code=400).count() == 2


@pytest.mark.parametrize("raw", [b"", b"[]", b"{", b'{"model": "demo", "input": NaN}', b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_a_400(client: Client, alice: Party, raw: bytes) -> None:
    response = client.post("/v1/responses", raw, content_type="application/json", headers=alice.auth)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_unknown_items_and_tools_pass_validation_for_native_routes(client: Client, alice: Party) -> None:
    # Only a translated route refuses them (by name); validation takes any item or tool that has a type.
    response = client.post("/v1/responses", json.dumps({**VALID, "input": [{"type": "local_shell_call_output", "id": "x",
                                                                             "output": "ok"}]}),
                           content_type="application/json", headers=alice.auth)
    assert response.status_code == 400 and response.json()["error"]["param"] == "input[0].type"
    assert "Responses API" in response.json()["error"]["message"]
