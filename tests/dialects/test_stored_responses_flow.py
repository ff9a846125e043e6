"""Stored responses end to end in process: an answer from POST /v1/responses is read back, listed, continued and
deleted, through the test client and through the lean ASGI handler that serves /v1 in production."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import OperationalError
from django.test import Client
from openai.types.responses import Response as SdkResponse

from proxy import stored_responses
from proxy.models import StoredResponse
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..proxy.v1_client import asgi, assert_asgi_envelope, assert_envelope, json_headers
from .stored import store

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def demo() -> None:
    ensure_demo_route()


def create(client: Client, party: Party, **fields: Any) -> Any:
    body = {"model": "demo", "input": "Say hello", **fields}
    return client.post("/v1/responses", data=json.dumps(body), content_type="application/json", headers=party.auth)


def test_an_answer_is_read_back_listed_continued_and_deleted(client: Client, alice: Party) -> None:
    created = create(client, alice)
    assert created.status_code == 200, created.content
    first = created.json()
    read = client.get(f"/v1/responses/{first['id']}", headers=alice.auth)
    assert read.status_code == 200 and read.json() == first
    assert SdkResponse.model_validate(read.json()).output_text

    items = client.get(f"/v1/responses/{first['id']}/input_items", headers=alice.auth).json()
    assert [item["content"] for item in items["data"]] == [[{"type": "input_text", "text": "Say hello"}]]

    second = create(client, alice, input="And again?", previous_response_id=first["id"])
    assert second.status_code == 200, second.content
    assert StoredResponse.objects.get(pk=second.json()["id"]).previous_response_id == first["id"]

    assert client.delete(f"/v1/responses/{first['id']}", headers=alice.auth).json()["deleted"] is True
    assert_envelope(create(client, alice, input="Once more", previous_response_id=first["id"]), 404,
                    "previous_response_id", "previous_response_not_found")


def test_bob_cannot_continue_alices_conversation(client: Client, alice: Party, bob: Party) -> None:
    first = create(client, alice).json()
    assert_envelope(create(client, bob, previous_response_id=first["id"]), 404, "previous_response_id",
                    "previous_response_not_found")
    assert_envelope(client.get(f"/v1/responses/{first['id']}", headers=bob.auth), 404, None)
    assert StoredResponse.objects.filter(tenant=bob.tenant).count() == 0


def test_store_false_keeps_nothing_to_read(client: Client, alice: Party) -> None:
    first = create(client, alice, store=False).json()
    assert_envelope(client.get(f"/v1/responses/{first['id']}", headers=alice.auth), 404, None)
    assert_envelope(create(client, alice, previous_response_id=first["id"]), 404, "previous_response_id")


def test_the_production_handler_serves_every_method(alice: Party, bob: Party) -> None:
    row = store(alice, status="queued", background=True)
    path = f"/v1/responses/{row.id}"
    assert asgi(path, method="GET", headers=alice.auth).json()["id"] == row.id
    assert asgi(f"{path}/input_items", method="GET", headers=alice.auth, query=b"limit=1&order=asc").status == 200
    assert_asgi_envelope(asgi(f"{path}/input_items", method="GET", headers=alice.auth, query=b"limit=x"), 400, "limit")
    assert_asgi_envelope(asgi(f"{path}/cancel", headers=json_headers(bob, b""), chunks=[b""]), 404, None)
    assert asgi(f"{path}/cancel", headers=json_headers(alice, b""), chunks=[b""]).json()["status"] == "cancelled"
    assert_asgi_envelope(asgi(path, method="PUT", headers=alice.auth), 405, None)
    assert asgi(path, method="DELETE", headers=alice.auth).json() == {"id": row.id, "object": "response",
                                                                       "deleted": True}
    assert_asgi_envelope(asgi(path, method="GET", headers=alice.auth), 404, None)


def test_reading_a_response_costs_one_query_with_a_warm_key(client: Client, alice: Party,
                                                            django_assert_num_queries: Any) -> None:
    row = store(alice)
    client.get(f"/v1/responses/{row.id}", headers=alice.auth)  # warms the key cache
    # the stored response's row
    with django_assert_num_queries(1):
        assert client.get(f"/v1/responses/{row.id}", headers=alice.auth).status_code == 200


@pytest.mark.parametrize("method,tail,step", [("GET", "", "aread"), ("DELETE", "", "adelete"),
                                              ("POST", "/cancel", "acancel"), ("GET", "/input_items", "alist_items")])
def test_a_database_outage_is_503_never_500(alice: Party, monkeypatch: pytest.MonkeyPatch, method: str, tail: str,
                                            step: str) -> None:
    row = store(alice, status="queued", background=True)

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(stored_responses, step, broken)
    headers = json_headers(alice, b"") if method == "POST" else alice.auth
    assert_asgi_envelope(asgi(f"/v1/responses/{row.id}{tail}", method=method, headers=headers), 503, None,
                         "service_unavailable")
