"""/v1/batches: create, read, list and cancel, as OpenAI's SDK calls them; every failure in OpenAI's envelope."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.test import Client
from django.utils import timezone
from openai.types import Batch as SdkBatch

from accounts.models import ApiKey
from batches import tasks
from batches.models import Batch, File

from ..conftest import Party
from ..factories import make_key
from ..proxy.v1_client import asgi, assert_asgi_envelope, assert_envelope, json_headers
from .conftest import chat_line, store_jsonl
from .test_validation import make_batch, send_parts  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db

CHAT = "/v1/chat/completions"


@pytest.fixture
def apply_async() -> Iterator[mock.MagicMock]:
    """The publish of the validation task, replaced: these tests check what is sent where."""
    with mock.patch.object(tasks.validate_batch, "apply_async") as patched:
        yield patched


@pytest.fixture
def input_file(alice: Party, files_dir: Any) -> File:
    return store_jsonl(alice, [chat_line("first"), chat_line("second")])


def create(client: Client, party: Party, body: Any) -> Any:
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post("/v1/batches", data=content, content_type="application/json", headers=party.auth)


def new(file: File, **fields: Any) -> dict[str, Any]:
    return {"input_file_id": file.public_id, "endpoint": CHAT, "completion_window": "24h", **fields}


def sdk(data: dict[str, Any]) -> SdkBatch:
    batch = SdkBatch.model_validate(data)
    assert batch.model_dump(exclude_unset=True) == data  # every field we send is one the SDK knows
    return batch


def test_create_answers_a_validating_batch_and_queues_its_validation(
        client: Client, alice: Party, input_file: File, apply_async: mock.MagicMock) -> None:
    before = timezone.now()
    r = create(client, alice, new(input_file, metadata={"project": "x"}))
    assert r.status_code == 200, r.content
    batch = sdk(r.json())
    assert (batch.object, batch.status, batch.endpoint, batch.input_file_id) == ("batch", "validating", CHAT, input_file.public_id)
    assert batch.metadata == {"project": "x"} and batch.completion_window == "24h" and batch.errors is None
    assert batch.request_counts is not None and batch.request_counts.total == 0 and batch.model is None
    assert batch.expires_at == batch.created_at + 24 * 3600 and batch.created_at >= int(before.timestamp())
    row = Batch.objects.get(public_id=batch.id)
    assert (row.tenant_id, row.key_id, row.queue, row.input_file_id) == (alice.tenant.pk, alice.key.pk, "default", input_file.pk)
    apply_async.assert_called_once_with(args=[row.pk], queue="default")


@pytest.mark.parametrize(("tier", "queue"), [("high", "urgent"), ("low", "bulk")])
def test_the_tenant_tier_picks_the_queue(client: Client, alice: Party, input_file: File, apply_async: mock.MagicMock,
                                         settings: Any, tier: str, queue: str) -> None:
    settings.TOLLGATE_QUEUES = {"high": "urgent", "default": "default", "low": "bulk"}
    type(alice.tenant).objects.filter(pk=alice.tenant.pk).update(batch_tier=tier)
    r = create(client, alice, new(input_file))
    assert r.status_code == 200 and Batch.objects.get().queue == queue
    apply_async.assert_called_once_with(args=[Batch.objects.get().pk], queue=queue)


def test_with_eager_celery_the_validation_runs_and_the_view_still_answers(
        client: Client, alice: Party, input_file: File, send_parts: mock.MagicMock) -> None:
    from proxy.services import ensure_demo_route

    ensure_demo_route()
    r = create(client, alice, new(input_file))
    assert r.status_code == 200 and sdk(r.json()).status == "validating"
    row = Batch.objects.get()
    assert (row.status, row.total) == (Batch.Status.IN_PROGRESS, 2)
    assert send_parts.call_args.args[0].pk == row.pk
    assert sdk(client.get(f"/v1/batches/{row.public_id}", headers=alice.auth).json()).status == "in_progress"


def test_a_broker_that_refuses_the_task_fails_the_batch_with_503(
        client: Client, alice: Party, input_file: File, apply_async: mock.MagicMock) -> None:
    apply_async.side_effect = ConnectionError("broker down")
    r = create(client, alice, new(input_file))
    assert_envelope(r, 503, None, "service_unavailable")
    row = Batch.objects.get()
    assert row.status == Batch.Status.FAILED and row.errors[0]["code"] == "queue_unavailable"


def test_without_eager_celery_the_publish_runs_off_the_orm_thread(
        client: Client, alice: Party, input_file: File, apply_async: mock.MagicMock, settings: Any) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    threads: list[threading.Thread] = []
    apply_async.side_effect = lambda **_: threads.append(threading.current_thread())
    r = create(client, alice, new(input_file))
    assert r.status_code == 200 and Batch.objects.get().status == Batch.Status.VALIDATING
    assert threads and threads[0] is not threading.main_thread()  # the test's ORM steps run on the main thread


def test_reads_cost_one_query_with_a_warm_key(client: Client, alice: Party, files_dir: Any,
                                              django_assert_num_queries: Any) -> None:
    batch = make_batch(alice, b"")
    client.get("/v1/batches", headers=alice.auth)  # warms the key cache
    with django_assert_num_queries(1):  # the batch, with its output and error files joined
        assert client.get(f"/v1/batches/{batch.public_id}", headers=alice.auth).status_code == 200
    with django_assert_num_queries(1):  # the page, likewise
        assert client.get("/v1/batches", headers=alice.auth).status_code == 200


def test_create_works_through_the_v1_handler(alice: Party, input_file: File, apply_async: mock.MagicMock) -> None:
    body = json.dumps(new(input_file)).encode()
    reply = asgi("/v1/batches", chunks=[body], headers=json_headers(alice, body))
    assert reply.status == 200 and sdk(reply.json()).status == "validating"
    reply = asgi(f"/v1/batches/{reply.json()['id']}", method="GET", headers=alice.auth)
    assert reply.status == 200 and sdk(reply.json()).status == "validating"
    assert_asgi_envelope(asgi("/v1/batches", method="DELETE", headers=alice.auth), 405, None, "method_not_allowed")


def bodies(file_id: str) -> list[Any]:
    good = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
    return [
        pytest.param("{", None, "invalid_json", id="broken-json"),
        pytest.param("", None, "invalid_json", id="empty-body"),
        pytest.param("[]", None, "invalid_json", id="array"),
        pytest.param({k: v for k, v in good.items() if k != "input_file_id"}, "input_file_id", "invalid_value",
                     id="no-input-file"),
        pytest.param({**good, "input_file_id": 5}, "input_file_id", "invalid_type", id="input-file-int"),
        pytest.param({k: v for k, v in good.items() if k != "endpoint"}, "endpoint", "invalid_value", id="no-endpoint"),
        pytest.param({**good, "endpoint": "/v1/responses"}, "endpoint", "invalid_value", id="unsupported-endpoint"),
        pytest.param({**good, "endpoint": ["/v1/embeddings"]}, "endpoint", "invalid_type", id="endpoint-list"),
        pytest.param({k: v for k, v in good.items() if k != "completion_window"}, "completion_window", "invalid_value",
                     id="no-window"),
        pytest.param({**good, "completion_window": "48h"}, "completion_window", "invalid_value", id="window-48h"),
        pytest.param({**good, "metadata": "x"}, "metadata", "invalid_type", id="metadata-string"),
        pytest.param({**good, "metadata": {str(i): "v" for i in range(17)}}, "metadata", "invalid_value",
                     id="metadata-17-pairs"),
        pytest.param({**good, "metadata": {"k" * 65: "v"}}, "metadata", "invalid_value", id="metadata-long-key"),
        pytest.param({**good, "metadata": {"k": "v" * 513}}, "metadata.k", "invalid_value", id="metadata-long-value"),
        pytest.param({**good, "metadata": {"k": 1}}, "metadata.k", "invalid_type", id="metadata-number"),
        pytest.param({**good, "metadata": {"k": None}}, "metadata.k", "invalid_type", id="metadata-null"),
        pytest.param({**good, "metadata": {"k": "a\x00b"}}, "metadata", "invalid_value", id="metadata-nul"),
        pytest.param({**good, "surprise": 1}, "surprise", "unknown_parameter", id="unknown-parameter"),
        pytest.param({**good, "input_file_id": "file-nope"}, "input_file_id", "not_found", id="unknown-file"),
        pytest.param({**good, "input_file_id": "file-\x00"}, "input_file_id", "not_found", id="nul-file-id"),
        pytest.param({**good, "input_file_id": "f" * 5000}, "input_file_id", "not_found", id="huge-file-id"),
    ]


@pytest.mark.parametrize(("body", "param", "code"), bodies("FILE"))
def test_bad_create_bodies_are_4xx(client: Client, alice: Party, input_file: File, apply_async: mock.MagicMock,
                                   body: Any, param: str | None, code: str) -> None:
    if isinstance(body, dict) and body.get("input_file_id") == "FILE":
        body = {**body, "input_file_id": input_file.public_id}
    r = create(client, alice, body)
    assert_envelope(r, 404 if code == "not_found" else 400, param, code)
    assert not Batch.objects.exists()
    apply_async.assert_not_called()


def test_the_input_file_must_have_purpose_batch_and_not_be_expired(
        client: Client, alice: Party, input_file: File, apply_async: mock.MagicMock) -> None:
    File.objects.filter(pk=input_file.pk).update(purpose=File.Purpose.BATCH_OUTPUT)
    assert_envelope(create(client, alice, new(input_file)), 400, "input_file_id", "invalid_value")
    File.objects.filter(pk=input_file.pk).update(purpose=File.Purpose.BATCH, expires_at=timezone.now() - timedelta(seconds=1))
    assert_envelope(create(client, alice, new(input_file)), 400, "input_file_id", "invalid_value")
    assert not Batch.objects.exists()


def test_bob_cannot_start_a_batch_on_alices_file(client: Client, alice: Party, bob: Party, input_file: File,
                                                 apply_async: mock.MagicMock) -> None:
    error = assert_envelope(create(client, bob, new(input_file)), 404, "input_file_id", "not_found")
    assert input_file.public_id in error["message"]
    assert not Batch.objects.exists()


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("put", "/v1/batches", "GET, POST"),
    ("delete", "/v1/batches", "GET, POST"),
    ("post", "/v1/batches/{id}", "GET"),
    ("delete", "/v1/batches/{id}", "GET"),
    ("get", "/v1/batches/{id}/cancel", "POST"),
])
def test_wrong_methods_are_405(client: Client, alice: Party, input_file: File, method: str, path: str, allow: str) -> None:
    batch = make_batch(alice, b"")
    r = getattr(client, method)(path.format(id=batch.public_id), headers=alice.auth)
    assert_envelope(r, 405, None, "method_not_allowed")
    assert r["Allow"] == allow


@pytest.mark.parametrize("path", ["/v1/batches", "/v1/batches/batch_x", "/v1/batches/batch_x/cancel"])
def test_every_endpoint_needs_a_key(client: Client, db: None, path: str) -> None:
    assert_envelope(client.get(path), 401, None, "invalid_api_key")
    assert_envelope(client.post(path, headers={"Authorization": "Bearer tg-nope"}), 401, None, "invalid_api_key")


def test_get_answers_the_batch_in_every_state(client: Client, alice: Party, files_dir: Any) -> None:
    now = timezone.now()
    output = store_jsonl(alice, [{"id": "x"}], "out.jsonl")
    batch = make_batch(alice, b"", status=Batch.Status.COMPLETED, total=3, completed=2, failed=1, model="demo",
                       in_progress_at=now, finalizing_at=now, completed_at=now, output_file=output, error_file=output,
                       errors=[{"code": "x", "message": "y", "param": None, "line": 1}])
    r = client.get(f"/v1/batches/{batch.public_id}", headers=alice.auth)
    found = sdk(r.json())
    assert (found.status, found.model, found.output_file_id, found.error_file_id) == ("completed", "demo", output.public_id,
                                                                                      output.public_id)
    assert found.request_counts is not None and (found.request_counts.completed, found.request_counts.failed) == (2, 1)
    assert found.completed_at == int(now.timestamp()) and found.errors is not None and found.errors.data[0].line == 1


def test_bob_cannot_see_alices_batch(client: Client, alice: Party, bob: Party, files_dir: Any) -> None:
    batch = make_batch(alice, b"")
    assert client.get(f"/v1/batches/{batch.public_id}", headers=alice.auth).status_code == 200
    assert_envelope(client.get(f"/v1/batches/{batch.public_id}", headers=bob.auth), 404, None, "not_found")
    assert client.get("/v1/batches", headers=bob.auth).json()["data"] == []


@pytest.mark.parametrize("batch_id", ["batch_nope", "x" * 500, "batch%00x"])
def test_unknown_batch_ids_are_404(client: Client, alice: Party, batch_id: str) -> None:
    assert_envelope(client.get(f"/v1/batches/{batch_id}", headers=alice.auth), 404, None, "not_found")
    assert_envelope(client.post(f"/v1/batches/{batch_id}/cancel", headers=alice.auth), 404, None, "not_found")


def test_any_key_of_the_tenant_may_read_and_cancel(client: Client, alice: Party, files_dir: Any) -> None:
    batch = make_batch(alice, b"")
    _, other = make_key(alice.tenant, name="another key")
    headers = {"Authorization": f"Bearer {other}"}
    assert client.get(f"/v1/batches/{batch.public_id}", headers=headers).status_code == 200
    assert client.post(f"/v1/batches/{batch.public_id}/cancel", headers=headers).json()["status"] == "cancelled"


def test_list_pages_newest_first(client: Client, alice: Party, bob: Party, files_dir: Any) -> None:
    start = timezone.now()
    ids = [make_batch(alice, b"", created_at=start + timedelta(seconds=i)).public_id for i in range(5)]
    make_batch(bob, b"")
    newest_first = ids[::-1]
    page = client.get("/v1/batches?limit=2", headers=alice.auth).json()
    assert [b["id"] for b in page["data"]] == newest_first[:2] and page["has_more"] is True
    assert (page["object"], page["first_id"], page["last_id"]) == ("list", newest_first[0], newest_first[1])
    for item in page["data"]:
        sdk(item)
    page = client.get(f"/v1/batches?limit=2&after={page['last_id']}", headers=alice.auth).json()
    assert [b["id"] for b in page["data"]] == newest_first[2:4] and page["has_more"] is True
    page = client.get(f"/v1/batches?after={page['last_id']}", headers=alice.auth).json()
    assert [b["id"] for b in page["data"]] == newest_first[4:] and page["has_more"] is False
    everything = client.get("/v1/batches", headers=alice.auth).json()
    assert [b["id"] for b in everything["data"]] == newest_first


def test_list_of_nothing(client: Client, alice: Party) -> None:
    assert client.get("/v1/batches", headers=alice.auth).json() == {
        "object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize(("query", "param"), [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=abc", "limit"), ("limit=-1", "limit"), ("limit=", "limit"),
    ("limit=" + "9" * 5000, "limit"), ("after=batch_nope", "after"), ("after=%00", "after"),
])
def test_bad_list_parameters_are_400(client: Client, alice: Party, query: str, param: str) -> None:
    assert_envelope(client.get(f"/v1/batches?{query}", headers=alice.auth), 400, param, "invalid_value")


def test_bob_cannot_page_after_alices_batch(client: Client, alice: Party, bob: Party, files_dir: Any) -> None:
    batch = make_batch(alice, b"")
    assert_envelope(client.get(f"/v1/batches?after={batch.public_id}", headers=bob.auth), 400, "after", "invalid_value")


def cancel(client: Client, party: Party, batch: Batch) -> Any:
    return client.post(f"/v1/batches/{batch.public_id}/cancel", headers=party.auth)


def test_cancel_of_a_validating_batch_cancels_it_at_once(client: Client, alice: Party, files_dir: Any) -> None:
    batch = make_batch(alice, b"")
    found = sdk(cancel(client, alice, batch).json())
    assert found.status == "cancelled" and found.cancelling_at is not None and found.cancelled_at is not None
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED


def test_cancel_of_a_running_batch_makes_it_cancelling(client: Client, alice: Party, files_dir: Any) -> None:
    batch = make_batch(alice, b"", status=Batch.Status.IN_PROGRESS, in_progress_at=timezone.now())
    r = cancel(client, alice, batch)
    found = sdk(r.json())
    assert r.status_code == 200 and found.status == "cancelling" and found.cancelling_at is not None
    assert found.cancelled_at is None
    again = sdk(cancel(client, alice, batch).json())  # idempotent: the same cancelling batch, time unchanged
    assert (again.status, again.cancelling_at) == ("cancelling", found.cancelling_at)


def test_cancel_of_a_cancelled_batch_answers_it_unchanged(client: Client, alice: Party, files_dir: Any) -> None:
    then = timezone.now() - timedelta(hours=1)
    batch = make_batch(alice, b"", status=Batch.Status.CANCELLED, cancelling_at=then, cancelled_at=then)
    found = sdk(cancel(client, alice, batch).json())
    assert (found.status, found.cancelled_at) == ("cancelled", int(then.timestamp()))


@pytest.mark.parametrize("status", ["completed", "failed", "expired", "finalizing"])
def test_cancel_of_a_finished_batch_is_409(client: Client, alice: Party, files_dir: Any, status: str) -> None:
    batch = make_batch(alice, b"", status=status)
    error = assert_envelope(cancel(client, alice, batch), 409, None)
    assert error["message"] == f"Cannot cancel a batch with status '{status}'."
    batch.refresh_from_db()
    assert batch.status == status and batch.cancelling_at is None


def test_bob_cannot_cancel_alices_batch(client: Client, alice: Party, bob: Party, files_dir: Any) -> None:
    batch = make_batch(alice, b"", status=Batch.Status.IN_PROGRESS)
    assert_envelope(cancel(client, bob, batch), 404, None, "not_found")
    batch.refresh_from_db()
    assert batch.status == Batch.Status.IN_PROGRESS and batch.cancelling_at is None


def test_a_revoked_key_can_no_longer_read_batches(client: Client, alice: Party, files_dir: Any) -> None:
    batch = make_batch(alice, b"")
    ApiKey.objects.filter(pk=alice.key.pk).update(revoked_at=timezone.now())
    assert_envelope(client.get(f"/v1/batches/{batch.public_id}", headers=alice.auth), 401, None, "invalid_api_key")


@pytest.mark.django_db(transaction=True)  # the runner's lines run on threads of their own: rows must be committed
def test_with_eager_celery_a_created_batch_runs_to_completed(client: Client, alice: Party, files_dir: Any) -> None:
    from proxy.services import ensure_demo_route

    ensure_demo_route()
    file = store_jsonl(alice, [chat_line("a"), chat_line("b")])
    assert create(client, alice, new(file)).status_code == 200
    found = sdk(client.get("/v1/batches", headers=alice.auth).json()["data"][0])
    assert found.status == "completed" and found.output_file_id is not None and found.model == "demo"
    assert found.request_counts is not None and (found.request_counts.total, found.request_counts.completed) == (2, 2)
