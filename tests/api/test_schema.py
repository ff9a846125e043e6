"""The OpenAPI schema documents what the management API answers: each error an operation can give, in DRF's
envelope, JSON request bodies only, and the key itself in the responses that carry it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

WRITES = {"post", "put", "patch"}


def expected_errors(method: str, path: str) -> set[str]:
    codes = {"401", "403", "429"}
    if "{" in path:
        codes.add("404")
    if method in WRITES:
        codes |= {"400", "409", "415"}
    if method == "delete":
        codes.add("409")
    return codes


def test_every_operation_documents_the_errors_it_can_answer(operator: Client) -> None:
    schema: dict[str, Any] = operator.get("/api/schema/?format=json").json()
    operations = [(method, path, op) for path, item in schema["paths"].items() for method, op in item.items()]
    assert len(operations) > 30
    for method, path, op in operations:
        responses = op["responses"]
        assert expected_errors(method, path) <= set(responses), (method, path)
        for code in expected_errors(method, path):
            body = responses[code]["content"]["application/json"]["schema"]
            assert "$ref" in body or "properties" in body, (method, path, code)
        assert "Retry-After" in responses["429"]["headers"]
        if "requestBody" in op:
            assert set(op["requestBody"]["content"]) == {"application/json"}, (method, path)
    components = schema["components"]["schemas"]
    assert components["ErrorDetail"]["required"] == ["detail"]
    assert components["ValidationErrors"]["type"] == "object"


def test_the_key_itself_is_documented_where_it_is_returned(operator: Client) -> None:
    schema: dict[str, Any] = operator.get("/api/schema/?format=json").json()
    issued = {"$ref": "#/components/schemas/IssuedKey"}
    create = schema["paths"]["/api/keys/"]["post"]
    rotate = schema["paths"]["/api/keys/{id}/rotate/"]["post"]
    revoke = schema["paths"]["/api/keys/{id}/revoke/"]["post"]
    assert create["responses"]["201"]["content"]["application/json"]["schema"] == issued
    assert rotate["responses"]["201"]["content"]["application/json"]["schema"] == issued
    assert "requestBody" not in rotate and "requestBody" not in revoke  # they take no body
    assert "key" in schema["components"]["schemas"]["IssuedKey"]["properties"]
    assert "key" not in schema["components"]["schemas"]["ApiKey"]["properties"]


def test_money_patterns_take_what_the_serializer_takes(operator: Client) -> None:
    schema: dict[str, Any] = operator.get("/api/schema/?format=json").json()
    pattern = re.compile(schema["components"]["schemas"]["Price"]["properties"]["input_per_million"]["pattern"])
    assert all(pattern.match(text) for text in ("2.50", "0", ".5", "12345678.123456", "1."))
    assert not any(pattern.match(text) for text in ("", ".", "-", "-1", "123456789", "1.1234567"))
