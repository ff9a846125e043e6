"""POST /v1/responses with background: true: stored queued, sent to the tenant's tier queue, run through the /v1
steps by batches.run_background_response (here in process; test_background_responses_live.py runs a real worker)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import OperationalError
from django.test import Client
from django.utils import timezone
from openai.types.responses import Response as SdkResponse

from accounts.keys import Limits
from accounts.models import ApiKey, Tenant
from batches import background, tasks
from billing.models import UsageRecord
from gateway_site.celery import app
from proxy import background as queueing
from proxy.db import db_step
from proxy.models import StoredResponse
from proxy.services import ensure_demo_route
from proxy.stored_responses import cancel_response

from ..conftest import Party
from ..dialects.stored import store
from ..factories import make_key
from ..proxy.v1_client import asgi, assert_asgi_envelope, assert_envelope, json_headers

pytestmark = pytest.mark.django_db


@pytest.fixture
def send_task() -> Iterator[mock.MagicMock]:
    """The publish of the run, replaced: these tests check what is sent where, then run the task themselves."""
    with mock.patch.object(app, "send_task") as patched:
        yield patched


@pytest.fixture(autouse=True)
def demo() -> None:
    ensure_demo_route()


def create(client: Client, party: Party | str, **fields: Any) -> Any:
    body = {"model": "demo", "input": "Say hello", "background": True, **fields}
    auth = party.auth if isinstance(party, Party) else {"Authorization": f"Bearer {party}"}
    return client.post("/v1/responses", data=json.dumps(body), content_type="application/json", headers=auth)


def run(response_id: str) -> None:
    tasks.run_background_response.apply(args=[response_id])


def test_create_answers_queued_and_sends_the_run_to_the_tiers_queue(client: Client, alice: Party,
                                                                     send_task: mock.MagicMock) -> None:
    Tenant.objects.filter(pk=alice.tenant.pk).update(batch_tier="high")
    r = create(client, alice, metadata={"job": "nightly"}, instructions="Be brief.")
    assert r.status_code == 200, r.content
    response = SdkResponse.model_validate(r.json())
    assert (response.status, response.background, response.model, response.output) == ("queued", True, "demo", [])
    assert response.metadata == {"job": "nightly"} and response.instructions == "Be brief."
    send_task.assert_called_once_with("batches.run_background_response", args=[response.id],
                                      queue=settings.TOLLGATE_QUEUES["high"])
    row = StoredResponse.objects.get(pk=response.id)
    assert (row.tenant_id, row.key_id, row.status, row.background, row.model) == (
        alice.tenant.pk, alice.key.pk, "queued", True, "demo")
    assert row.request["background"] is True and row.input_items[0]["content"] == "Say hello"
    assert not UsageRecord.objects.exists()  # nothing ran yet


def test_the_run_completes_with_one_ledger_row(client: Client, alice: Party, send_task: mock.MagicMock) -> None:
    response_id = create(client, alice).json()["id"]
    run(response_id)
    row = StoredResponse.objects.get(pk=response_id)
    assert row.status == "completed", row.response
    answer = client.get(f"/v1/responses/{response_id}", headers=alice.auth).json()
    response = SdkResponse.model_validate(answer)
    assert (response.id, response.status, response.background) == (response_id, "completed", True)
    assert response.output_text and response.usage is not None and response.usage.output_tokens > 0
    [record] = UsageRecord.objects.all()
    assert (record.endpoint, record.tenant_id, record.key_id, record.status_code) == (
        "responses", alice.tenant.pk, alice.key.pk, 200)
    assert record.batch_id == ""  # a background response is not a batch line
    assert (record.prompt_tokens, record.completion_tokens) == (
        response.usage.input_tokens, response.usage.output_tokens)


def test_a_message_delivered_twice_runs_once(client: Client, alice: Party, send_task: mock.MagicMock) -> None:
    response_id = create(client, alice).json()["id"]
    run(response_id)
    run(response_id)
    assert UsageRecord.objects.count() == 1
    assert StoredResponse.objects.get(pk=response_id).status == "completed"


def test_a_conversation_goes_on_from_a_background_response(client: Client, alice: Party,
                                                           send_task: mock.MagicMock) -> None:
    first = create(client, alice).json()["id"]
    running = create(client, alice, previous_response_id=first)
    assert_envelope(running, 400, "previous_response_id")  # still queued: not finished
    run(first)
    second = create(client, alice, previous_response_id=first).json()["id"]
    run(second)
    row = StoredResponse.objects.get(pk=second)
    assert (row.status, row.previous_response_id) == ("completed", first)


def test_cancel_before_the_run_means_no_provider_call_and_no_row(client: Client, alice: Party,
                                                                 send_task: mock.MagicMock) -> None:
    response_id = create(client, alice).json()["id"]
    cancelled = client.post(f"/v1/responses/{response_id}/cancel", headers=alice.auth)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    run(response_id)
    assert StoredResponse.objects.get(pk=response_id).status == "cancelled"
    assert not UsageRecord.objects.exists()


def test_cancel_during_the_run_keeps_cancelled_and_the_row(client: Client, alice: Party,
                                                           send_task: mock.MagicMock) -> None:
    response_id = create(client, alice).json()["id"]
    job = background.claim(response_id)
    assert job is not None and StoredResponse.objects.get(pk=response_id).status == "in_progress"
    assert client.post(f"/v1/responses/{response_id}/cancel", headers=alice.auth).json()["status"] == "cancelled"
    async_to_sync(background.BackgroundRun(job).run)()  # the request had already passed the gate
    row = StoredResponse.objects.get(pk=response_id)
    assert (row.status, row.response["output"]) == ("cancelled", [])
    [record] = UsageRecord.objects.all()  # it reached the provider: its row is written
    assert record.endpoint == "responses"


def test_a_key_revoked_before_the_run_fails_it(client: Client, alice: Party, send_task: mock.MagicMock) -> None:
    response_id = create(client, alice).json()["id"]
    ApiKey.objects.filter(pk=alice.key.pk).update(revoked_at=timezone.now())
    run(response_id)
    row = StoredResponse.objects.get(pk=response_id)
    assert row.status == "failed" and "revoked" in row.response["error"]["message"]
    assert row.response["error"]["code"] == "invalid_prompt"
    SdkResponse.model_validate(row.response)
    assert not UsageRecord.objects.exists()  # as /v1 answers a revoked key: no caller, no row


@pytest.mark.parametrize("fields,param", [({"stream": True}, "stream"), ({"store": False}, "store"),
                                          ({"input": 42}, "input"), ({"model": ""}, "model")])
def test_what_cannot_run_in_the_background_is_400(client: Client, alice: Party, send_task: mock.MagicMock,
                                                  fields: dict[str, Any], param: str) -> None:
    assert_envelope(create(client, alice, **fields), 400, param)
    assert not StoredResponse.objects.exists() and not send_task.called


def test_unknown_and_refused_models_are_refused_at_once(client: Client, alice: Party,
                                                        send_task: mock.MagicMock) -> None:
    assert_envelope(create(client, alice, model="nope"), 404, "model", "model_not_found")
    _, narrow = make_key(alice.tenant, name="other models only", allowed_models=["other"])
    assert_envelope(create(client, narrow), 403, "model")
    assert not StoredResponse.objects.exists() and not send_task.called


def test_bob_cannot_continue_alices_response_in_the_background(client: Client, alice: Party, bob: Party,
                                                               send_task: mock.MagicMock) -> None:
    alices = store(alice)
    assert_envelope(create(client, bob, previous_response_id=alices.id), 404, "previous_response_id",
                    "previous_response_not_found")
    assert StoredResponse.objects.count() == 1 and not send_task.called


def test_no_key_is_401_and_nothing_is_queued(client: Client, send_task: mock.MagicMock) -> None:
    r = client.post("/v1/responses", data=json.dumps({"model": "demo", "input": "x", "background": True}),
                    content_type="application/json")
    assert_envelope(r, 401, None, "invalid_api_key")
    assert not StoredResponse.objects.exists() and not send_task.called


def test_a_broker_that_refuses_fails_the_response_with_503(client: Client, alice: Party,
                                                           send_task: mock.MagicMock) -> None:
    send_task.side_effect = ConnectionError("broker down")
    r = create(client, alice)
    assert_envelope(r, 503, None, "service_unavailable")
    assert r["x-should-retry"] == "true"
    [row] = StoredResponse.objects.all()
    assert row.status == "failed" and row.response["status"] == "failed" and row.response["error"]
    assert client.get(f"/v1/responses/{row.id}", headers=alice.auth).json()["status"] == "failed"


@pytest.mark.parametrize("raw,expected", [
    (b'{"model":"m","background":true}', True), (b'{"model":"m", "background" :\n true}', True),
    (b'{"model":"m","background":false}', False), (b'{"model":"m"}', False),
    (b'{"model":"m","input":"the \\"background\\": true key"}', False),
])
def test_asked_is_a_bytes_search(rf: Any, raw: bytes, expected: bool) -> None:
    request = rf.post("/v1/responses", data=raw, content_type="application/json")
    assert queueing.asked(request) is expected


def test_a_nested_background_key_is_an_ordinary_request(client: Client, alice: Party,
                                                        send_task: mock.MagicMock) -> None:
    tool = {"type": "function", "name": "paint", "parameters": {"type": "object", "background": True}}
    r = create(client, alice, background=False, tools=[tool])
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "completed" and not send_task.called


def test_cancel_while_waiting_at_the_rate_limit_stops_before_the_provider(client: Client, alice: Party,
                                                                        send_task: mock.MagicMock) -> None:
    _, secret = make_key(alice.tenant, name="one a minute", limits=Limits(requests_per_minute=1))
    response_id = create(client, secret).json()["id"]
    assert create(client, secret, background=False).status_code == 200  # the minute's one request
    job = background.claim(response_id)
    assert job is not None
    cancel = db_step(cancel_response)

    async def run_then_cancel() -> None:
        run = asyncio.ensure_future(background.BackgroundRun(job).run())
        await asyncio.sleep(0.5)  # the run is waiting for the rate limit's next window
        assert not run.done()
        await cancel(alice.tenant.pk, response_id)
        await asyncio.wait_for(run, timeout=5)  # seen within a second, not after the window

    async_to_sync(run_then_cancel)()
    assert StoredResponse.objects.get(pk=response_id).status == "cancelled"
    assert list(UsageRecord.objects.values_list("endpoint", flat=True)) == ["responses"]  # the foreground one only


def test_a_database_outage_at_create_is_503_and_sends_nothing(client: Client, alice: Party, send_task: mock.MagicMock,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(**kwargs: Any) -> str:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(queueing, "asave_queued", broken)
    assert_envelope(create(client, alice), 503, None, "service_unavailable")
    assert not send_task.called and not StoredResponse.objects.exists()


def test_a_nul_in_the_request_is_queued_and_run(client: Client, alice: Party, send_task: mock.MagicMock) -> None:
    # PostgreSQL's jsonb refuses U+0000: the stored copy has U+FFFD in its place.
    r = create(client, alice, input="a\x00b", metadata={"note": "x\x00y"})
    assert r.status_code == 200, r.content
    run(r.json()["id"])
    row = StoredResponse.objects.get(pk=r.json()["id"])
    assert row.status == "completed" and row.input_items[0]["content"] == "a\ufffdb"
    assert row.response["metadata"] == {"note": "x\ufffdy"}


def test_an_answer_is_stored_through_a_short_database_outage(client: Client, alice: Party, send_task: mock.MagicMock,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    response_id = create(client, alice).json()["id"]
    real, failures = background.astore_result, [OperationalError("gone"), OperationalError("still gone")]

    async def flaky(*args: Any) -> bool:
        if failures:
            raise failures.pop(0)
        return await real(*args)

    monkeypatch.setattr(background, "astore_result", flaky)
    monkeypatch.setattr(background, "RETRY_SECONDS", 0.01)
    run(response_id)
    assert not failures and StoredResponse.objects.get(pk=response_id).status == "completed"
    assert UsageRecord.objects.count() == 1


def test_a_body_too_large_is_left_to_the_ordinary_path(client: Client, alice: Party, settings: Any,
                                                       send_task: mock.MagicMock) -> None:
    settings.TOLLGATE_MAX_BODY_BYTES = 1024
    r = create(client, alice, input="x" * 2000)
    assert_envelope(r, 413, None, "request_too_large")
    assert not send_task.called and not StoredResponse.objects.exists()


def test_the_production_handler_queues_it(alice: Party, send_task: mock.MagicMock) -> None:
    body = json.dumps({"model": "demo", "input": "Say hello", "background": True}).encode()
    reply = asgi("/v1/responses", headers=json_headers(alice, body), chunks=[body])
    assert reply.status == 200, reply.content
    assert reply.json()["status"] == "queued" and send_task.call_args.kwargs["args"] == [reply.json()["id"]]
    too_big = json.dumps({"model": "demo", "input": "x" * 20_000_000, "background": True}).encode()
    assert_asgi_envelope(asgi("/v1/responses", headers=json_headers(alice, too_big), chunks=[too_big]), 413, None)
    assert send_task.call_count == 1
