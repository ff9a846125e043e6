"""Every /v1 path answers the JSON envelope, and bodies that never finish or are declared too large are answered
at once (408, 413, 400), with the row an authenticated request leaves."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from django.test import Client, override_settings

from billing.models import UsageRecord
from proxy.models import ModelRoute

from ..conftest import Party
from .v1_client import CHAT, asgi, assert_asgi_envelope, assert_envelope, chat, json_headers


# 4. Every /v1 path answers the JSON envelope, never Django's HTML


def test_model_path_with_crlf_answers_the_envelope(client: Client, alice: Party, demo: ModelRoute) -> None:
    response = client.get("/v1/models/m%0d%0aX-Injected:%201", headers=alice.auth)
    assert_envelope(response, 404, "model", "model_not_found")
    assert "X-Injected" not in response.headers
    reply = asgi("/v1/models/m\r\nX-Injected: 1", method="GET", headers=alice.auth)
    assert_asgi_envelope(reply, 404, "model", "model_not_found")
    assert "x-injected" not in reply.headers


def test_unknown_path_with_newlines_answers_the_envelope(client: Client, alice: Party, demo: ModelRoute) -> None:
    assert_envelope(client.post("/v1/chat/completions%0a", headers=alice.auth), 404, None, "unknown_url")
    assert_envelope(client.get("/v1/%0a%0d", headers=alice.auth), 404, None, "unknown_url")
    assert_asgi_envelope(asgi("/v1/\n", method="GET", headers=alice.auth), 404, None, "unknown_url")
    # Anonymous callers learn nothing about which paths exist.
    assert_asgi_envelope(asgi("/v1/\n", method="GET"), 401, None, "invalid_api_key")


def test_path_the_urlconf_does_not_know_answers_the_envelope(db: None) -> None:
    # The handler only serves /v1/, but whatever reaches it gets the envelope.
    assert_asgi_envelope(asgi("/elsewhere", method="GET"), 404, None, "unknown_url")


def test_query_string_that_is_not_utf8_answers_the_envelope(alice: Party, demo: ModelRoute) -> None:
    reply = asgi("/v1/models", method="GET", headers=alice.auth, query=b"a=\xff")
    assert_asgi_envelope(reply, 400, None)


# 5. Bodies that never finish, or are declared too large


def test_valid_chat_through_the_asgi_handler_is_200(alice: Party, demo: ModelRoute) -> None:
    body = json.dumps(chat()).encode()
    reply = asgi(CHAT, chunks=[body[:10], body[10:]], headers=json_headers(alice, body))
    assert reply.status == 200, reply.content
    assert UsageRecord.objects.get(request_id=uuid.UUID(reply["x-request-id"])).end_reason == "complete"


@override_settings(TOLLGATE_BODY_TIMEOUT_SECONDS=0.2)
def test_body_that_stops_arriving_is_408_with_one_row(alice: Party, demo: ModelRoute) -> None:
    body = json.dumps(chat()).encode()
    before = UsageRecord.objects.count()
    started = time.monotonic()
    reply = asgi(CHAT, chunks=[body[:10]], finished=False, headers=json_headers(alice, body))
    assert_asgi_envelope(reply, 408, None, "request_timeout")
    assert 0.2 <= time.monotonic() - started < 5
    assert UsageRecord.objects.count() == before + 1
    row = UsageRecord.objects.get(request_id=uuid.UUID(reply["x-request-id"]))
    assert (row.status_code, row.error_code) == (408, "request_timeout")


@override_settings(TOLLGATE_BODY_TIMEOUT_SECONDS=0.2)
def test_body_that_never_starts_is_408(alice: Party, demo: ModelRoute) -> None:
    reply = asgi(CHAT, chunks=[b""], finished=False, headers=json_headers(alice, b"x" * 100))
    assert_asgi_envelope(reply, 408, None, "request_timeout")


@override_settings(TOLLGATE_BODY_TIMEOUT_SECONDS=30)
def test_declared_body_above_the_limit_is_413_without_waiting_for_it(alice: Party, demo: ModelRoute) -> None:
    headers = {**alice.auth, "Content-Type": "application/json", "Content-Length": "11000000"}
    before = UsageRecord.objects.count()
    started = time.monotonic()
    reply = asgi(CHAT, chunks=[b'{"model": "'], finished=False, headers=headers)
    assert_asgi_envelope(reply, 413, None, "request_too_large")
    assert time.monotonic() - started < 5
    assert UsageRecord.objects.count() == before + 1


@override_settings(TOLLGATE_MAX_BODY_BYTES=2048, DATA_UPLOAD_MAX_MEMORY_SIZE=2048, TOLLGATE_BODY_TIMEOUT_SECONDS=30)
def test_undeclared_body_above_the_limit_is_413_without_reading_the_rest(alice: Party, demo: ModelRoute) -> None:
    # No Content-Length (chunked upload): reading stops once the body passes the limit.
    reply = asgi(CHAT, chunks=[b" " * 1024] * 3, finished=False, headers={**alice.auth, "Content-Type": "application/json"})
    assert_asgi_envelope(reply, 413, None, "request_too_large")


@pytest.mark.parametrize("declared", ["9" * 5000, "99999999999999999999"], ids=["5000-digits", "20-digits"])
def test_content_length_with_too_many_digits_is_413(alice: Party, demo: ModelRoute, declared: str) -> None:
    headers = {**alice.auth, "Content-Type": "application/json", "Content-Length": declared}
    reply = asgi(CHAT, chunks=[b"{}"], finished=False, headers=headers)
    assert_asgi_envelope(reply, 413, None, "request_too_large")


@pytest.mark.parametrize("declared", ["\u00b2", "-1", "1e3", " 12"], ids=["superscript-two", "negative", "exponent", "space"])
def test_content_length_that_is_not_a_number_is_400(alice: Party, demo: ModelRoute, declared: str) -> None:
    # "\u00b2".isdigit() is true, yet int() and Django's body reader refuse it.
    headers = {**alice.auth, "Content-Type": "application/json", "Content-Length": declared}
    before = UsageRecord.objects.count()
    reply = asgi(CHAT, chunks=[json.dumps(chat()).encode()], headers=headers)
    assert_asgi_envelope(reply, 400, None, "invalid_request")
    assert UsageRecord.objects.count() == before + 1
