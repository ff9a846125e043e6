"""GET/DELETE /v1/responses/{id}, POST .../cancel and GET .../input_items: the tenant's own stored responses only,
every failure in OpenAI's envelope (never a 500), as the official SDK reads them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from openai.types.responses import Response as SdkResponse
from openai.types.responses import ResponseItemList

from proxy.models import StoredResponse

from ..conftest import Party
from ..proxy.v1_client import assert_envelope
from .stored import store

pytestmark = pytest.mark.django_db

BAD_IDS = ["resp_unknown", "x" * 65, "resp_%00", "resp_%0a", "%E2%98%83", "resp_' OR '1'='1"]


def url(response_id: str, tail: str = "") -> str:
    return f"/v1/responses/{response_id}{tail}"


def call(client: Client, method: str, path: str, party: Party, **query: Any) -> Any:
    return getattr(client, method)(path, data=query or None, headers=party.auth)


def test_get_answers_the_stored_response_object(client: Client, alice: Party) -> None:
    row = store(alice, text="The answer is 42.")
    r = call(client, "get", url(row.id), alice)
    assert r.status_code == 200, r.content
    response = SdkResponse.model_validate(r.json())
    assert (response.id, response.status, response.output_text) == (row.id, "completed", "The answer is 42.")


def test_get_reports_the_rows_status(client: Client, alice: Party) -> None:
    row = store(alice, status="queued", background=True)
    StoredResponse.objects.filter(pk=row.pk).update(status="in_progress")
    assert call(client, "get", url(row.id), alice).json()["status"] == "in_progress"


@pytest.mark.parametrize("method,tail", [("get", ""), ("delete", ""), ("post", "/cancel"), ("get", "/input_items")])
def test_bob_cannot_touch_alices_response(client: Client, alice: Party, bob: Party, method: str, tail: str) -> None:
    row = store(alice, status="queued", background=True)
    assert_envelope(call(client, method, url(row.id, tail), bob), 404, None, "not_found")
    row.refresh_from_db()
    assert row.status == "queued"  # not cancelled, not deleted
    assert call(client, "get", url(row.id), alice).status_code == 200


@pytest.mark.parametrize("method,tail", [("get", ""), ("delete", ""), ("post", "/cancel"), ("get", "/input_items")])
def test_expired_responses_are_gone(client: Client, alice: Party, method: str, tail: str) -> None:
    row = store(alice, status="queued", background=True, expires_in=timedelta(seconds=-1))
    assert_envelope(call(client, method, url(row.id, tail), alice), 404, None, "not_found")


@pytest.mark.parametrize("response_id", BAD_IDS)
@pytest.mark.parametrize("method,tail", [("get", ""), ("delete", ""), ("post", "/cancel"), ("get", "/input_items")])
def test_unknown_and_malformed_ids_are_404(client: Client, alice: Party, response_id: str, method: str,
                                           tail: str) -> None:
    store(alice)
    assert_envelope(call(client, method, url(response_id, tail), alice), 404, None, "not_found")


@pytest.mark.parametrize("method,tail,allowed", [
    ("post", "", "GET, DELETE"), ("put", "", "GET, DELETE"), ("patch", "", "GET, DELETE"),
    ("get", "/cancel", "POST"), ("delete", "/cancel", "POST"),
    ("post", "/input_items", "GET"), ("delete", "/input_items", "GET"),
])
def test_wrong_methods_are_405(client: Client, alice: Party, method: str, tail: str, allowed: str) -> None:
    row = store(alice)
    r = call(client, method, url(row.id, tail), alice)
    assert_envelope(r, 405, None, "method_not_allowed")
    assert r["Allow"] == allowed


@pytest.mark.parametrize("method,tail", [("get", ""), ("delete", ""), ("post", "/cancel"), ("get", "/input_items")])
def test_no_key_is_401(client: Client, alice: Party, method: str, tail: str) -> None:
    row = store(alice)
    assert_envelope(getattr(client, method)(url(row.id, tail)), 401, None, "invalid_api_key")


def test_delete_removes_the_response(client: Client, alice: Party) -> None:
    row = store(alice)
    r = call(client, "delete", url(row.id), alice)
    assert r.status_code == 200, r.content
    assert r.json() == {"id": row.id, "object": "response", "deleted": True}
    assert not StoredResponse.objects.filter(pk=row.pk).exists()
    assert_envelope(call(client, "get", url(row.id), alice), 404, None)
    assert_envelope(call(client, "delete", url(row.id), alice), 404, None)  # a second delete finds nothing


@pytest.mark.parametrize("status", ["queued", "in_progress"])
def test_cancel_stops_a_background_response(client: Client, alice: Party, status: str) -> None:
    row = store(alice, status=status, background=True)
    r = call(client, "post", url(row.id, "/cancel"), alice)
    assert r.status_code == 200, r.content
    response = SdkResponse.model_validate(r.json())
    assert (response.id, response.status, response.background) == (row.id, "cancelled", True)
    row.refresh_from_db()
    assert (row.status, row.response["status"]) == ("cancelled", "cancelled")
    # Cancelling again answers the cancelled response, as OpenAI does.
    again = call(client, "post", url(row.id, "/cancel"), alice)
    assert (again.status_code, again.json()["status"]) == (200, "cancelled")


@pytest.mark.parametrize("status", ["completed", "failed", "incomplete"])
def test_cancel_refuses_a_finished_response(client: Client, alice: Party, status: str) -> None:
    row = store(alice, status=status, background=True)
    error = assert_envelope(call(client, "post", url(row.id, "/cancel"), alice), 400, None)
    assert status in error["message"]
    row.refresh_from_db()
    assert row.status == status


def test_cancel_refuses_a_response_not_made_in_the_background(client: Client, alice: Party) -> None:
    row = store(alice, status="completed", background=False)
    error = assert_envelope(call(client, "post", url(row.id, "/cancel"), alice), 400, None)
    assert "background" in error["message"]


def test_input_items_lists_the_turns_input_with_ids(client: Client, alice: Party) -> None:
    items = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"type": "function_call_output", "call_id": "call_1", "output": "42", "id": "fco_given"}]
    row = store(alice, items=items)
    r = call(client, "get", url(row.id, "/input_items"), alice)
    assert r.status_code == 200, r.content
    page = r.json()
    assert page["object"] == "list" and page["has_more"] is False
    data = page["data"]
    assert [item["id"] for item in data][0] == "fco_given"  # newest first by default, as OpenAI
    assert [item.get("role") for item in data] == [None, "user", "system"]
    assert (page["first_id"], page["last_id"]) == (data[0]["id"], data[-1]["id"])
    assert len({item["id"] for item in data}) == 3
    listed = ResponseItemList.model_validate(page)  # the SDK's own page type reads every item
    assert [item.type for item in listed.data] == ["function_call_output", "message", "message"]
    assert data[1]["content"] == [{"type": "input_text", "text": "Hi"}]
    # The ids are stable: a second read lists the same ones.
    assert [i["id"] for i in call(client, "get", url(row.id, "/input_items"), alice).json()["data"]] == \
        [item["id"] for item in data]


def test_input_items_pages_with_limit_order_and_after(client: Client, alice: Party) -> None:
    row = store(alice, items=[{"role": "user", "content": f"message {n}"} for n in range(5)])
    first = call(client, "get", url(row.id, "/input_items"), alice, limit="2", order="asc").json()
    assert [i["content"][0]["text"] for i in first["data"]] == ["message 0", "message 1"] and first["has_more"]
    second = call(client, "get", url(row.id, "/input_items"), alice, limit="2", order="asc",
                  after=first["last_id"]).json()
    assert [i["content"][0]["text"] for i in second["data"]] == ["message 2", "message 3"] and second["has_more"]
    last = call(client, "get", url(row.id, "/input_items"), alice, limit="2", order="asc",
                after=second["last_id"]).json()
    assert [i["content"][0]["text"] for i in last["data"]] == ["message 4"] and not last["has_more"]
    newest = call(client, "get", url(row.id, "/input_items"), alice, limit="1", order="desc").json()
    assert newest["data"][0]["content"][0]["text"] == "message 4" and newest["has_more"]


def test_input_items_of_an_empty_turn(client: Client, alice: Party) -> None:
    row = store(alice, items=[])
    assert call(client, "get", url(row.id, "/input_items"), alice).json() == {
        "object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize("query,param", [
    ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "-1"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"limit": "1e2"}, "limit"), ({"limit": ""}, "limit"), ({"limit": "٣"}, "limit"),
    ({"order": "up"}, "order"), ({"order": ""}, "order"), ({"after": "msg_not_here"}, "after"),
])
def test_input_items_bad_queries_are_400(client: Client, alice: Party, query: dict[str, str], param: str) -> None:
    row = store(alice)
    assert_envelope(call(client, "get", url(row.id, "/input_items"), alice, **query), 400, param)


@pytest.mark.parametrize("stream", ["true", "True", "1"])
def test_get_with_stream_is_400_not_json_the_sdk_would_misread(client: Client, alice: Party, stream: str) -> None:
    row = store(alice, status="queued", background=True)
    assert_envelope(call(client, "get", url(row.id), alice, stream=stream), 400, "stream")
    assert call(client, "get", url(row.id), alice, stream="false").status_code == 200
