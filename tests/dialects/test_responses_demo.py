"""POST /v1/responses through the built-in demo model: whole and streamed answers, conversations continued with
previous_response_id (the demo echoes its prompt, so the history is seen reaching the model), tenants kept apart, and
one ledger row per request."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from openai.types.responses import Response

from billing.models import UsageRecord
from proxy.models import StoredResponse
from proxy.services import ensure_demo_route

from ..conftest import Party
from .responses_calls import answer, create, row_of, stream


@pytest.fixture(autouse=True)
def demo(db: None) -> None:
    ensure_demo_route()


def test_a_whole_answer_is_a_response_recorded_and_stored(client: Client, alice: Party) -> None:
    response = create(client, alice, model="demo", input="Tell me about otters", instructions="Be brief.")
    assert response.status_code == 200, response.content
    body = Response.model_validate(response.json())
    assert body.model == "demo" and body.status == "completed" and body.id.startswith("resp_")
    assert "Tell me about otters" in body.output_text and body.instructions == "Be brief."
    row = row_of(response)
    assert (row.endpoint, row.end_reason, row.status_code, row.stream) == ("responses", "complete", 200, False)
    stored = StoredResponse.objects.get(pk=body.id)
    assert stored.tenant_id == alice.tenant.pk and stored.status == "completed"
    assert stored.input_items == [{"type": "message", "role": "user", "content": "Tell me about otters"}]
    assert stored.response["output"][0]["content"][0]["text"] == body.output_text
    assert body.usage is not None and body.usage.output_tokens > 0


def test_usage_in_the_response_is_what_the_ledger_bills(client: Client, alice: Party) -> None:
    response = create(client, alice, model="demo", input="Count the tokens of this prompt")
    usage, row = response.json()["usage"], row_of(response)
    assert (row.prompt_tokens, row.completion_tokens) == (usage["input_tokens"], usage["output_tokens"])


def test_a_streamed_answer_is_semantic_events_ending_with_the_stored_response(alice: Party) -> None:
    response, events = stream(alice, model="demo", input="Stream to me")
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds
    final = events[-1].response
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert final.output_text == text and "Stream to me" in text and final.model == "demo"
    row = row_of(response)
    assert (row.endpoint, row.end_reason, row.stream) == ("responses", "complete", True)
    assert (row.prompt_tokens, row.completion_tokens) == (final.usage.input_tokens, final.usage.output_tokens)
    stored = StoredResponse.objects.get(pk=final.id)
    assert stored.status == "completed" and stored.response["output"][0]["content"][0]["text"] == text


def test_a_conversation_continues_with_previous_response_id(client: Client, alice: Party) -> None:
    first = answer(client, alice, model="demo", input="alpha bravo charlie")
    second = answer(client, alice, model="demo", input="delta echo", previous_response_id=first.id)
    # The demo echoes the start of its whole prompt: the first turn reached the model before this one.
    assert "alpha bravo charlie" in second.output_text
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    _, events = stream(alice, model="demo", input="foxtrot", previous_response_id=second.id)
    third = events[-1].response
    assert "alpha bravo charlie" in third.output_text
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens
    # A streamed turn is stored before its last event: the conversation goes on from it at once.
    fourth = answer(client, alice, model="demo", input="golf", previous_response_id=third.id)
    assert fourth.usage.input_tokens > third.usage.input_tokens


def test_instructions_are_not_carried_into_the_next_turn(client: Client, alice: Party) -> None:
    first = answer(client, alice, model="demo", input="one two", instructions="Secret instructions here")
    second = answer(client, alice, model="demo", input="three", previous_response_id=first.id)
    # The demo echoes the start of its prompt: the first turn's input, not its instructions, comes first now.
    assert "You said: “Secret" in first.output_text and "You said: “one two" in second.output_text


def test_store_false_keeps_nothing_to_continue_from(client: Client, alice: Party) -> None:
    first = answer(client, alice, model="demo", input="forget me", store=False)
    assert first.store is False and not StoredResponse.objects.filter(pk=first.id).exists()
    response = create(client, alice, model="demo", input="again", previous_response_id=first.id)
    assert response.status_code == 404 and response.json()["error"]["param"] == "previous_response_id"


def test_bob_cannot_continue_alices_conversation(client: Client, alice: Party, bob: Party) -> None:
    first = answer(client, alice, model="demo", input="alice's private words")
    response = create(client, bob, model="demo", input="what did she say?", previous_response_id=first.id)
    assert response.status_code == 404, response.content
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("previous_response_id", "previous_response_not_found")
    assert "private" not in response.content.decode()
    row = row_of(response)
    assert (row.tenant_id, row.endpoint, row.status_code, row.cost_picos) == (bob.tenant.pk, "responses", 404, 0)


def test_a_built_in_tool_on_a_translated_route_is_refused_by_name(client: Client, alice: Party) -> None:
    for fields in ({}, {"stream": True}):
        response = create(client, alice, model="demo", input="Search the web", tools=[{"type": "web_search"}], **fields)
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["param"] == "tools[0].type" and "web_search" in error["message"]
        row = row_of(response)
        assert (row.end_reason, row.status_code, row.completion_tokens, row.cost_picos) == ("rejected", 400, 0, 0)
    assert UsageRecord.objects.filter(tenant=alice.tenant).count() == 2


def test_each_request_leaves_one_row(client: Client, alice: Party, settings: Any) -> None:
    answer(client, alice, model="demo", input="one")
    stream(alice, model="demo", input="two")
    create(client, alice, model="demo", input=7)
    create(client, alice, model="no-such-model", input="three")
    rows = UsageRecord.objects.filter(tenant=alice.tenant).order_by("id")
    assert [(r.endpoint, r.status_code) for r in rows] == [("responses", 200), ("responses", 200), ("responses", 400),
                                                          ("responses", 404)]
