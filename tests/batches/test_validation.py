"""Checking a batch's input file on the worker: valid files start the batch, any error fails it with nothing run."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone
from openai.types import Batch as SdkBatch

from accounts import services as account_services
from batches import storage, validation
from batches.models import Batch, BatchPart, File
from batches.objects import batch_object
from proxy.models import ModelRoute
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..factories import make_key
from .conftest import chat_line

pytestmark = pytest.mark.django_db

CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"


@pytest.fixture
def send_parts() -> Iterator[mock.MagicMock]:
    """runner.send_parts, replaced: these tests check what validation hands to the runner, not the runner."""
    with mock.patch("batches.runner.send_parts") as patched:
        yield patched


@pytest.fixture(autouse=True)
def demo(db: None, files_dir: Any) -> ModelRoute:
    return ensure_demo_route()


def embedding_line(custom_id: str, model: str = "demo") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS, "body": {"model": model, "input": "hello"}}


def store(party: Party, content: bytes) -> File:
    return storage.save(tenant_id=party.tenant.pk, key_id=party.key.pk, purpose=File.Purpose.BATCH,
                        filename="input.jsonl", content=io.BytesIO(content), size=len(content))


def jsonl(*lines: Any) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def make_batch(party: Party, content: bytes, endpoint: str = CHAT, **fields: Any) -> Batch:
    file = store(party, content)
    fields.setdefault("key", party.key)
    return Batch.objects.create(tenant=party.tenant, endpoint=endpoint, input_file=file,
                                input_file_public_id=file.public_id, queue="default", **fields)


def validated(batch: Batch) -> Batch:
    validation.validate_batch(batch.pk)
    batch.refresh_from_db()
    SdkBatch.model_validate(batch_object(batch))  # every state the validation leaves parses as the SDK's type
    return batch


def assert_failed(batch: Batch, send_parts: mock.MagicMock, *errors: tuple[str, int | None, str | None]) -> None:
    batch = validated(batch)
    assert batch.status == Batch.Status.FAILED and batch.failed_at is not None and batch.in_progress_at is None
    assert [(e["code"], e["line"], e["param"]) for e in batch.errors] == list(errors)
    assert all(e["message"] for e in batch.errors)
    assert not BatchPart.objects.filter(batch=batch).exists() and batch.total == 0
    send_parts.assert_not_called()
    sdk = SdkBatch.model_validate(batch_object(batch))
    assert sdk.errors is not None and [e.code for e in sdk.errors.data or []] == [e[0] for e in errors]


def test_a_valid_chat_file_starts_the_batch(alice: Party, send_parts: mock.MagicMock) -> None:
    batch = validated(make_batch(alice, jsonl(*(chat_line(f"line-{i}") for i in range(3)))))
    assert batch.status == Batch.Status.IN_PROGRESS and batch.in_progress_at is not None
    assert (batch.total, batch.model, batch.queue, batch.parts, batch.errors) == (3, "demo", "default", 1, None)
    part = BatchPart.objects.get(batch=batch)
    assert (part.number, part.first_line, part.last_line, part.state, part.tenant_id) == (0, 0, 3, "pending", alice.tenant.pk)
    send_parts.assert_called_once()
    assert send_parts.call_args.args[0].pk == batch.pk


def test_a_valid_embeddings_file_starts_the_batch(alice: Party, send_parts: mock.MagicMock) -> None:
    batch = validated(make_batch(alice, jsonl(embedding_line("a"), embedding_line("b")), EMBEDDINGS))
    assert (batch.status, batch.total, batch.model) == (Batch.Status.IN_PROGRESS, 2, "demo")
    send_parts.assert_called_once()


def test_lines_are_split_into_parts(alice: Party, send_parts: mock.MagicMock, settings: Any) -> None:
    settings.TOLLGATE_BATCH_PART_LINES = 2
    batch = validated(make_batch(alice, jsonl(*(chat_line(str(i)) for i in range(5)))))
    parts = BatchPart.objects.filter(batch=batch).order_by("number")
    assert [(p.number, p.first_line, p.last_line) for p in parts] == [(0, 0, 2), (1, 2, 4), (2, 4, 5)]
    assert batch.parts == 3


def test_a_route_with_its_own_queue_takes_the_batch(alice: Party, send_parts: mock.MagicMock, demo: ModelRoute) -> None:
    ModelRoute.objects.filter(pk=demo.pk).update(batch_queue="gpu")
    assert validated(make_batch(alice, jsonl(chat_line("a")))).queue == "gpu"
    handed = send_parts.call_args.args[0]  # the runner sends the parts to the batch's queue: it must see the new one
    assert (handed.queue, handed.status) == ("gpu", Batch.Status.IN_PROGRESS)


def test_an_alias_is_kept_as_the_batch_model(alice: Party, send_parts: mock.MagicMock, demo: ModelRoute) -> None:
    ModelRoute.objects.filter(pk=demo.pk).update(aliases=["demo-alias"], batch_queue="gpu")
    batch = validated(make_batch(alice, jsonl(chat_line("a", model="demo-alias"))))
    assert (batch.status, batch.model, batch.queue) == (Batch.Status.IN_PROGRESS, "demo-alias", "gpu")


def test_a_byte_order_mark_crlf_and_trailing_blank_lines_are_accepted(alice: Party, send_parts: mock.MagicMock) -> None:
    content = b"\xef\xbb\xbf" + json.dumps(chat_line("a")).encode() + b"\r\n" + json.dumps(chat_line("b")).encode() + b"\n\n \n"
    batch = validated(make_batch(alice, content))
    assert (batch.status, batch.total) == (Batch.Status.IN_PROGRESS, 2)


LINE = chat_line("x")
BAD_LINES = [
    pytest.param(b'{"custom_id": "x", ', ("invalid_json_line", None), id="broken-json"),
    pytest.param(b"[1, 2]", ("invalid_json_line", None), id="not-an-object"),
    pytest.param(b'{"custom_id": "\xff"}', ("invalid_json_line", None), id="not-utf8"),
    pytest.param(b'{"custom_id": NaN}', ("invalid_json_line", None), id="nan"),
    pytest.param(b"", ("invalid_json_line", None), id="blank-line-between-requests"),
    pytest.param({k: v for k, v in LINE.items() if k != "custom_id"}, ("missing_required_parameter", "custom_id"),
                 id="no-custom-id"),
    pytest.param({k: v for k, v in LINE.items() if k != "method"}, ("missing_required_parameter", "method"), id="no-method"),
    pytest.param({k: v for k, v in LINE.items() if k != "url"}, ("missing_required_parameter", "url"), id="no-url"),
    pytest.param({k: v for k, v in LINE.items() if k != "body"}, ("missing_required_parameter", "body"), id="no-body"),
    pytest.param({**LINE, "body": {"messages": LINE["body"]["messages"]}}, ("missing_required_parameter", "body.model"),
                 id="no-model"),
    pytest.param({**LINE, "url": EMBEDDINGS}, ("invalid_url", "url"), id="other-endpoint"),
    pytest.param({**LINE, "url": 42}, ("invalid_url", "url"), id="url-not-a-string"),
    pytest.param({**LINE, "method": "GET"}, ("invalid_method", "method"), id="get"),
    pytest.param({**LINE, "custom_id": "first"}, ("duplicate_custom_id", "custom_id"), id="duplicate-custom-id"),
    pytest.param({**LINE, "body": {**LINE["body"], "model": "demo-two"}}, ("mismatched_model", "body.model"),
                 id="another-model"),
    pytest.param({**LINE, "body": {**LINE["body"], "stream": True}}, ("invalid_value", "body.stream"), id="stream"),
    pytest.param({**LINE, "custom_id": "x" * 201}, ("invalid_value", "custom_id"), id="custom-id-too-long"),
    pytest.param({**LINE, "custom_id": 7}, ("invalid_value", "custom_id"), id="custom-id-not-a-string"),
    pytest.param({**LINE, "custom_id": "a\x00b"}, ("invalid_value", "custom_id"), id="custom-id-nul"),
    pytest.param({**LINE, "body": "hello"}, ("invalid_value", "body"), id="body-not-an-object"),
    pytest.param({**LINE, "body": {"model": "demo"}}, ("invalid_value", "body.messages"), id="body-without-messages"),
    pytest.param({**LINE, "body": {**LINE["body"], "temperature": 9}}, ("invalid_value", "body.temperature"),
                 id="body-out-of-range"),
    pytest.param({**LINE, "body": {**LINE["body"], "messages": [{"role": "user", "content": 4}]}},
                 ("invalid_value", "body.messages[0].content"), id="body-wrong-type"),
    pytest.param(b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "demo", '
                 b'"messages": [{"role": "user", "content": "\\ud800"}]}}', ("invalid_value", "body.messages[0].content"),
                 id="lone-surrogate"),
]


@pytest.mark.parametrize(("line", "expected"), BAD_LINES)
def test_a_bad_line_fails_the_batch(alice: Party, send_parts: mock.MagicMock, line: Any,
                                    expected: tuple[str, str | None]) -> None:
    code, param = expected
    batch = make_batch(alice, jsonl(chat_line("first"), line, chat_line("last")))
    assert_failed(batch, send_parts, (code, 2, param))


@pytest.mark.parametrize("model", ["no-such-model", "x" * 300])
def test_an_unknown_model_fails_the_batch(alice: Party, send_parts: mock.MagicMock, model: str) -> None:
    batch = make_batch(alice, jsonl(*(chat_line(str(i), model=model) for i in range(3))))
    assert_failed(batch, send_parts, ("model_not_found", 1, "body.model"))  # once, not on every line


def test_a_model_the_tenant_may_not_use_is_not_found(alice: Party, send_parts: mock.MagicMock) -> None:
    alice.tenant.allowed_models = ["other"]
    alice.tenant.save()
    assert_failed(make_batch(alice, jsonl(chat_line("a"))), send_parts, ("model_not_found", 1, "body.model"))


def test_a_model_the_key_may_not_use_is_not_found(alice: Party, send_parts: mock.MagicMock) -> None:
    key, _ = make_key(alice.tenant, allowed_models=["other"])
    batch = make_batch(alice, jsonl(chat_line("a")), key=key)
    assert_failed(batch, send_parts, ("model_not_found", 1, "body.model"))
    assert "This API key is not allowed" in Batch.objects.get(pk=batch.pk).errors[0]["message"]


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["no-bytes", "blank-lines"])
def test_an_empty_file_fails_the_batch(alice: Party, send_parts: mock.MagicMock, content: bytes) -> None:
    assert_failed(make_batch(alice, content), send_parts, ("empty_file", None, None))


def test_too_many_requests_fail_the_batch(alice: Party, send_parts: mock.MagicMock, settings: Any) -> None:
    settings.TOLLGATE_BATCH_MAX_LINES = 3
    batch = make_batch(alice, jsonl(*(chat_line(str(i)) for i in range(5))))
    assert_failed(batch, send_parts, ("too_many_requests", 4, None))


def test_errors_stop_at_one_hundred(alice: Party, send_parts: mock.MagicMock) -> None:
    batch = make_batch(alice, jsonl(*([b"{"] * 150)))
    assert_failed(batch, send_parts, *[("invalid_json_line", n, None) for n in range(1, 101)])


def test_a_line_longer_than_a_body_is_an_error_and_later_lines_keep_their_numbers(
        alice: Party, send_parts: mock.MagicMock, settings: Any) -> None:
    settings.TOLLGATE_MAX_BODY_BYTES = 1000
    long = json.dumps({**LINE, "custom_id": "long", "body": {**LINE["body"], "user": "u" * 3000}}).encode()
    batch = make_batch(alice, jsonl(chat_line("a"), long, chat_line("a")))
    assert_failed(batch, send_parts, ("invalid_value", 2, None), ("duplicate_custom_id", 3, "custom_id"))


class LineReader(io.BytesIO):
    """A file that lets the validation read it only in lines of bounded size."""

    largest = 0

    def read(self, size: int | None = -1) -> bytes:
        raise AssertionError("the input file is read whole")

    def readline(self, size: int | None = -1) -> bytes:
        assert size is not None and 0 < size <= 1001
        LineReader.largest = max(LineReader.largest, size)
        return super().readline(size)


def test_the_file_is_read_line_by_line(alice: Party, send_parts: mock.MagicMock, settings: Any) -> None:
    settings.TOLLGATE_MAX_BODY_BYTES = 1000
    content = jsonl(*(chat_line(str(i)) for i in range(20)))
    batch = make_batch(alice, content)
    with mock.patch.object(storage, "open_content", return_value=LineReader(content)):
        assert validated(batch).total == 20
    assert LineReader.largest == 1001


@pytest.mark.parametrize(("change", "code"), [
    ({"revoked_at": timezone.now()}, "invalid_api_key"),
    ({"expires_at": timezone.now() - timedelta(minutes=1)}, "invalid_api_key"),
])
def test_an_unusable_key_fails_the_batch(alice: Party, send_parts: mock.MagicMock, change: dict[str, Any], code: str) -> None:
    batch = make_batch(alice, jsonl(chat_line("a")))
    type(alice.key).objects.filter(pk=alice.key.pk).update(**change)
    assert_failed(batch, send_parts, (code, None, None))


def test_a_revoked_key_fails_the_batch_through_the_service(alice: Party, send_parts: mock.MagicMock) -> None:
    batch = make_batch(alice, jsonl(chat_line("a")))
    account_services.revoke_key(key=alice.key)
    assert_failed(batch, send_parts, ("invalid_api_key", None, None))
    assert "revoked" in Batch.objects.get(pk=batch.pk).errors[0]["message"]


def test_an_inactive_tenant_fails_the_batch(alice: Party, send_parts: mock.MagicMock) -> None:
    batch = make_batch(alice, jsonl(chat_line("a")))
    type(alice.tenant).objects.filter(pk=alice.tenant.pk).update(is_active=False)
    assert_failed(batch, send_parts, ("tenant_inactive", None, None))


def test_a_deleted_input_file_fails_the_batch(alice: Party, send_parts: mock.MagicMock) -> None:
    batch = make_batch(alice, jsonl(chat_line("a")))
    storage.delete(batch.input_file)
    assert_failed(Batch.objects.get(pk=batch.pk), send_parts, ("file_not_found", None, "input_file_id"))


def test_missing_content_fails_the_batch(alice: Party, send_parts: mock.MagicMock) -> None:
    batch = make_batch(alice, jsonl(chat_line("a")))
    storage.storage().delete(batch.input_file.storage_name)
    assert_failed(batch, send_parts, ("file_not_found", None, "input_file_id"))


def test_a_batch_cancelled_before_validation_is_left_alone(alice: Party, send_parts: mock.MagicMock) -> None:
    batch = make_batch(alice, jsonl(chat_line("a")), status=Batch.Status.CANCELLED)
    batch = validated(batch)
    assert (batch.status, batch.total, batch.in_progress_at) == (Batch.Status.CANCELLED, 0, None)
    assert not BatchPart.objects.exists()
    send_parts.assert_not_called()


@pytest.mark.parametrize("content", [jsonl(chat_line("a")), jsonl(b"{")], ids=["valid", "invalid"])
def test_a_batch_cancelled_while_it_is_read_stays_cancelled(alice: Party, send_parts: mock.MagicMock, content: bytes) -> None:
    batch = make_batch(alice, content)
    scan_file = validation.scan_file

    def cancel_meanwhile(*args: Any) -> validation.Scan:
        Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.CANCELLED, cancelled_at=timezone.now())
        return scan_file(*args)

    with mock.patch.object(validation, "scan_file", cancel_meanwhile):
        batch = validated(batch)
    assert (batch.status, batch.errors, batch.failed_at, batch.total) == (Batch.Status.CANCELLED, None, None, 0)
    assert not BatchPart.objects.exists()
    send_parts.assert_not_called()


def test_a_redelivered_task_leaves_the_batch_alone(alice: Party, send_parts: mock.MagicMock) -> None:
    batch = validated(make_batch(alice, jsonl(chat_line("a"), chat_line("b"))))
    started = batch.in_progress_at
    batch = validated(batch)
    assert (batch.status, batch.in_progress_at, BatchPart.objects.filter(batch=batch).count()) == (
        Batch.Status.IN_PROGRESS, started, 1)
    send_parts.assert_called_once()


def test_a_failed_batch_stays_failed_when_the_task_runs_again(alice: Party, send_parts: mock.MagicMock) -> None:
    batch = make_batch(alice, jsonl(b"{"))
    failed_at = validated(batch).failed_at
    assert validated(batch).failed_at == failed_at


def test_an_unknown_batch_id_is_ignored(db: None, send_parts: mock.MagicMock) -> None:
    validation.validate_batch(999_999)
    send_parts.assert_not_called()
