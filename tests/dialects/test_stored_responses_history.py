"""The conversation state behind previous_response_id: each tenant continues only its own completed, unexpired
responses, a bounded number of turns back; answers are stored when the request asks (store, the default)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from django.db import DatabaseError

from accounts.keys import Caller, caller_by_id
from proxy import responses_store
from proxy.db import db_step
from proxy.errors import GatewayError
from proxy.models import StoredResponse
from proxy.providers.base import RESPONSES, ApiRequest

from ..conftest import Party
from .stored import response_body, store

pytestmark = pytest.mark.django_db


def caller(party: Party) -> Caller:
    return caller_by_id(party.key.pk)


def history(party: Party, previous: str) -> list[dict[str, Any]]:
    return async_to_sync(responses_store.history)(caller(party), previous)


def refusal(party: Party, previous: str) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        history(party, previous)
    return raised.value


def conversation(party: Party, turns: int) -> list[StoredResponse]:
    rows: list[StoredResponse] = []
    for n in range(turns):
        rows.append(store(party, previous=rows[-1].id if rows else "", text=f"answer {n}",
                          items=[{"role": "user", "content": f"question {n}"}]))
    return rows


def texts(items: list[dict[str, Any]]) -> list[str]:
    return [item["content"] if isinstance(item["content"], str) else item["content"][0]["text"] for item in items]


def test_new_ids_look_like_openais() -> None:
    ids = {responses_store.new_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("resp_") and len(i) == 53 and int(i[5:], 16) >= 0 for i in ids)


def test_history_is_every_earlier_turn_oldest_first(alice: Party) -> None:
    rows = conversation(alice, 3)
    items = history(alice, rows[-1].id)
    assert texts(items) == ["question 0", "answer 0", "question 1", "answer 1", "question 2", "answer 2"]
    assert [item.get("role") for item in items] == ["user", "assistant"] * 3


def test_bob_cannot_continue_alices_conversation(alice: Party, bob: Party) -> None:
    rows = conversation(alice, 2)
    for row in rows:
        error = refusal(bob, row.id)
        assert (error.status, error.code, error.param) == (404, "previous_response_not_found", "previous_response_id")
    assert len(history(alice, rows[-1].id)) == 4


def test_a_chain_through_another_tenants_response_is_broken(alice: Party, bob: Party) -> None:
    bobs = store(bob)
    mine = store(alice, previous=bobs.id)  # only an edited row could link this way: it must still not leak
    assert refusal(alice, mine.id).status == 404


@pytest.mark.parametrize("previous", ["resp_missing", "", "x" * 65, "resp_\x00"])
def test_unknown_ids_are_404(alice: Party, previous: str) -> None:
    store(alice)
    error = refusal(alice, previous)
    assert (error.status, error.code, error.param) == (404, "previous_response_not_found", "previous_response_id")


def test_expired_responses_cannot_be_continued(alice: Party) -> None:
    row = store(alice, expires_in=timedelta(seconds=-1))
    assert refusal(alice, row.id).status == 404


def test_a_deleted_earlier_turn_breaks_the_chain(alice: Party) -> None:
    rows = conversation(alice, 3)
    first = rows[0].id
    rows[0].delete()
    error = refusal(alice, rows[-1].id)
    assert error.status == 404 and first in error.message


@pytest.mark.parametrize("status", ["failed", "cancelled", "incomplete"])
def test_unfinished_or_failed_responses_are_not_found(alice: Party, status: str) -> None:
    row = store(alice, status=status, background=True)
    assert refusal(alice, row.id).status == 404


@pytest.mark.parametrize("status", ["queued", "in_progress"])
def test_a_running_background_response_is_400(alice: Party, status: str) -> None:
    row = store(alice, status=status, background=True)
    error = refusal(alice, row.id)
    assert (error.status, error.param) == (400, "previous_response_id")
    assert status in error.message


def test_history_is_bounded(alice: Party, settings: Any) -> None:
    settings.TOLLGATE_RESPONSES_MAX_TURNS = 3
    rows = conversation(alice, 4)
    assert len(history(alice, rows[2].id)) == 6  # three turns: the most allowed
    error = refusal(alice, rows[3].id)
    assert (error.status, error.param) == (400, "previous_response_id")
    assert "3 turns" in error.message


def test_a_loop_of_links_is_refused(alice: Party) -> None:
    first = store(alice)
    second = store(alice, previous=first.id)
    StoredResponse.objects.filter(pk=first.pk).update(previous_response_id=second.id)
    assert refusal(alice, second.id).status == 404


def request_for(party: Party, store_it: bool = True, **data: Any) -> ApiRequest:
    body = ApiRequest(RESPONSES, "demo", {"model": "demo", "input": "hi", **data})
    body.state.update(store=store_it, tenant_id=party.tenant.pk, key_id=party.key.pk,
                      input_items=[{"role": "user", "content": "hi"}])
    return body


def test_save_stores_the_answer_for_its_retention(alice: Party, settings: Any) -> None:
    settings.TOLLGATE_RESPONSES_RETENTION_DAYS = 7
    previous = store(alice)
    response = response_body(responses_store.new_id(), text="Stored.")
    async_to_sync(responses_store.save)(request_for(alice, previous_response_id=previous.id), response)
    row = StoredResponse.objects.get(pk=response["id"])
    assert (row.tenant_id, row.key_id, row.model, row.status, row.previous_response_id) == (
        alice.tenant.pk, alice.key.pk, "demo", "completed", previous.id)
    assert row.response == response and row.input_items == [{"role": "user", "content": "hi"}]
    assert row.request["previous_response_id"] == previous.id
    assert timedelta(days=7) - timedelta(minutes=1) < row.expires_at - row.created_at <= timedelta(days=7)
    assert texts(history(alice, row.id))[-2:] == ["hi", "Stored."]


def test_save_with_store_false_keeps_nothing(alice: Party) -> None:
    response = response_body(responses_store.new_id())
    async_to_sync(responses_store.save)(request_for(alice, store_it=False), response)
    assert not StoredResponse.objects.exists()


def test_answers_saved_at_once_share_one_insert_and_each_is_stored(alice: Party) -> None:
    responses = [response_body(responses_store.new_id(), text=f"Answer {i}.") for i in range(12)]
    statements: list[int] = []
    real = responses_store.insert_new

    def counted(rows: list[dict[str, Any]]) -> list[bool]:
        statements.append(len(rows))
        return real(rows)

    async def save_all() -> None:
        await asyncio.gather(*(responses_store.save(request_for(alice), response) for response in responses))

    with mock.patch.object(responses_store, "insert_new", counted), \
            mock.patch.object(responses_store, "ainsert_new", db_step(counted)):
        async_to_sync(save_all)()
    assert sum(statements) == 12 and len(statements) < 12  # group commit: the first alone, the rest together
    stored = {row.id: row for row in StoredResponse.objects.filter(tenant=alice.tenant)}
    assert set(stored) == {r["id"] for r in responses}
    assert all(stored[r["id"]].response["output"][0]["content"][0]["text"] == r["output"][0]["content"][0]["text"]
               for r in responses)


def test_save_never_raises(alice: Party, caplog: pytest.LogCaptureFixture) -> None:
    response = response_body(responses_store.new_id())
    with mock.patch.object(responses_store, "ainsert_new", side_effect=DatabaseError("disk full")):
        async_to_sync(responses_store.save)(request_for(alice), response)
    assert not StoredResponse.objects.exists()
    assert "could not store response" in caplog.text


def test_an_answer_with_nul_characters_is_stored_readable(alice: Party) -> None:
    response = response_body(responses_store.new_id(), text="a\x00b")
    async_to_sync(responses_store.save)(request_for(alice, input="hi\x00"), response)
    row = StoredResponse.objects.get(pk=response["id"])
    assert row.response["output"][0]["content"][0]["text"] == "a\ufffdb" and row.request["input"] == "hi\ufffd"


@pytest.mark.parametrize("value,expected", [
    ("a\x00b", "a\ufffdb"), ({"k\x00": ["x\x00", 1, None]}, {"k\ufffd": ["x\ufffd", 1, None]}),
    ("the six characters \\u0000 stay", "the six characters \\u0000 stay"), ("\\\x00", "\\\ufffd"), ("plain", "plain"),
])
def test_storable_replaces_only_real_nuls(value: Any, expected: Any) -> None:
    assert responses_store.storable(value) == expected


def test_a_nul_in_the_text_is_stored_readable_and_continuable(alice: Party) -> None:
    response = response_body(responses_store.new_id(), text="said a\x00b")
    body = request_for(alice, metadata={"note": "x\x00y"})
    body.state["input_items"] = [{"role": "user", "content": "a\x00b"}]
    async_to_sync(responses_store.save)(body, response)
    row = StoredResponse.objects.get(pk=response["id"])
    assert row.request["metadata"] == {"note": "x\ufffdy"}
    assert texts(history(alice, row.id)) == ["a\ufffdb", "said a\ufffdb"]
