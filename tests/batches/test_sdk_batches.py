"""The queued path as the official OpenAI SDK sees it: a live Tollgate process takes files and batches, a live Celery
worker consuming the tier queues runs the lines against the mock upstream, and the ledger holds one row per line.

Both processes share this test run's database and data folder: on the embedded default the broker is Celery's
filesystem transport in that folder (and the uploaded files live there), with REDIS_URL set it is Redis.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from django.conf import settings
from django.db import connection
from openai import OpenAI
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from batches.models import BatchLine
from bench import mock_upstream
from billing import budgets
from billing.models import Budget, Price, UsageRecord

from ..conftest import Party
from ..factories import make_key, make_route
from .live_batches import chat_line, embedding_line, jsonl, parse_jsonl, queued_gateway, upload, wait_for

pytestmark = pytest.mark.django_db(transaction=True)  # the server and the worker must see committed rows

# The mock answers every chat line with 10 prompt and 5 completion tokens, every embedding line with 3 tokens.
PRICE = {"input_per_million": Decimal("100"), "output_per_million": Decimal("200")}
CHAT_LINE_PICOS = (10 * 100 + 5 * 200) * 10**6 // 2  # at the route's 50 % batch discount
EMBEDDING_LINE_PICOS = 3 * 100 * 10**6 // 2


@pytest.fixture(scope="module")
def gateway(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One server and one worker for the module; the worker runs two lines at a time on the low tier's queue."""
    queues = settings.TOLLGATE_QUEUES
    concurrency = f"{queues['high']}=64,{queues['default']}=32,{queues['low']}=2"
    with queued_gateway(connection.settings_dict["NAME"], tmp_path_factory.mktemp("queued"),
                        TOLLGATE_BATCH_CONCURRENCY=concurrency) as running:
        yield running


@pytest.fixture
def url(gateway: tuple[str, Path]) -> str:
    return gateway[0]


@pytest.fixture
def worker_log(gateway: tuple[str, Path]) -> Path:
    return gateway[1]


@pytest.fixture
def routes(mock_upstream_url: str) -> None:
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock",
               batch_discount_percent=Decimal(50))
    make_route("slow", upstream_model="mock-hang", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    Price.objects.create(model="mock", **PRICE)


def sdk(url: str, party: Party | str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=party if isinstance(party, str) else party.secret, max_retries=0)


def settled(budget: Budget) -> budgets.BudgetStatus:
    """The budget's totals once every line's hold is released (a hold settles just after its row is written)."""
    deadline = time.monotonic() + 5
    while (state := budgets.status(budget)).reserved_micros and time.monotonic() < deadline:
        time.sleep(0.05)
    return state


def assert_one_row_per_line(batch_id: str, custom_ids: list[str], output: list[dict[str, object]]) -> list[UsageRecord]:
    rows = list(UsageRecord.objects.filter(batch_id=batch_id))
    assert Counter(r.custom_id for r in rows) == Counter(custom_ids)  # each line once, none twice
    by_custom_id = {r.custom_id: r for r in rows}
    for line in output:
        row = by_custom_id[str(line["custom_id"])]
        assert uuid.UUID(str(line["response"]["request_id"])) == row.request_id  # type: ignore[index]
    return rows


def test_chat_batch_completes_with_every_line_once_in_the_output_and_the_ledger(
    url: str, alice: Party, routes: None, worker_log: Path
) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10.00"), period="month")
    client = sdk(url, alice)
    custom_ids = [f"request-{i}" for i in range(20)]
    file_id = upload(client, [chat_line(c) for c in custom_ids])
    upstream_before = len(mock_upstream.peers)
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"job": "nightly-eval"})
    assert (batch.object, batch.status, batch.input_file_id, batch.endpoint) == (
        "batch", "validating", file_id, "/v1/chat/completions")
    assert batch.id.startswith("batch_") and batch.metadata == {"job": "nightly-eval"}
    assert batch.expires_at == batch.created_at + 24 * 3600

    done = wait_for(client, batch.id, {"completed"}, timeout=60, log=worker_log)
    counts = done.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (20, 20, 0)
    assert done.output_file_id and done.error_file_id is None and done.errors is None and done.model == "mock"
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at  # type: ignore[operator]
    assert done.metadata == {"job": "nightly-eval"}

    output = parse_jsonl(client.files.content(done.output_file_id).read())
    assert [line["custom_id"] for line in output] == custom_ids  # every line once, in input order
    assert len({line["id"] for line in output}) == 20 and all(line["id"].startswith("batch_req_") for line in output)
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.choices[0].message.content == "Hello from the mock."
    assert len(mock_upstream.peers) - upstream_before == 20  # nothing sent upstream twice

    rows = assert_one_row_per_line(batch.id, custom_ids, output)
    assert {(r.tenant_id, r.key_id, r.status_code, r.public_model) for r in rows} == {
        (alice.tenant.pk, alice.key.pk, 200, "mock")}
    assert [r.cost_picos for r in rows] == [CHAT_LINE_PICOS] * 20  # the route's batch discount, exact
    assert settled(budget).spent_picos == sum(r.cost_picos for r in rows)


def test_embeddings_batch_completes(url: str, alice: Party, routes: None, worker_log: Path) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10.00"), period="month")
    client = sdk(url, alice)
    custom_ids = [f"doc-{i}" for i in range(20)]
    batch = client.batches.create(input_file_id=upload(client, [embedding_line(c) for c in custom_ids]),
                                  endpoint="/v1/embeddings", completion_window="24h")
    done = wait_for(client, batch.id, {"completed"}, timeout=60, log=worker_log)
    counts = done.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (20, 20, 0)
    assert done.output_file_id and done.error_file_id is None

    output = parse_jsonl(client.files.content(done.output_file_id).read())
    assert [line["custom_id"] for line in output] == custom_ids
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        embeddings = CreateEmbeddingResponse.model_validate(line["response"]["body"])
        assert embeddings.data[0].embedding == [0.1, 0.2, 0.3] and embeddings.usage.prompt_tokens == 3

    rows = assert_one_row_per_line(batch.id, custom_ids, output)
    assert {(r.endpoint, r.status_code, r.prompt_tokens) for r in rows} == {("embeddings", 200, 3)}
    assert [r.cost_picos for r in rows] == [EMBEDDING_LINE_PICOS] * 20
    assert settled(budget).spent_picos == sum(r.cost_picos for r in rows)


def test_cancel_stops_new_lines_and_lists_the_unrun_ones_in_the_error_file(
    url: str, alice: Party, routes: None, worker_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mock_upstream, "HANG", 0.4)  # each line takes 0.4 s upstream; the low tier runs two at once
    alice.tenant.batch_tier = "low"
    alice.tenant.save(update_fields=["batch_tier"])
    client = sdk(url, alice)
    custom_ids = [f"slow-{i}" for i in range(30)]
    batch = client.batches.create(input_file_id=upload(client, [chat_line(c, model="slow") for c in custom_ids]),
                                  endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 30
    while UsageRecord.objects.filter(batch_id=batch.id).count() < 2:
        assert time.monotonic() < deadline, worker_log.read_text(errors="replace")[-3000:]
        time.sleep(0.05)

    with pytest.raises(openai.ConflictError):
        client.files.delete(batch.input_file_id)  # a running batch still reads its input file
    cancelling = client.batches.cancel(batch.id)
    asked_at = time.monotonic()
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    cancelled = wait_for(client, batch.id, {"cancelled"}, timeout=6, log=worker_log)
    assert time.monotonic() - asked_at < 4, "cancel took more than 4 s"
    assert cancelled.cancelled_at is not None and cancelled.cancelled_at >= cancelled.cancelling_at  # type: ignore[operator]
    upstream_at_cancel = len(mock_upstream.peers)
    counts = cancelled.request_counts
    assert counts is not None and counts.total == 30 and counts.completed + counts.failed == 30
    assert 2 <= counts.completed < 30

    output = parse_jsonl(client.files.content(cancelled.output_file_id).read()) if cancelled.output_file_id else []
    errors = parse_jsonl(client.files.content(cancelled.error_file_id).read())  # type: ignore[arg-type]
    assert all(line["response"]["status_code"] == 200 for line in output) and len(output) == counts.completed
    assert {(line["response"], line["error"]["code"]) for line in errors} == {(None, "batch_cancelled")}
    assert len(errors) == counts.failed
    ran, unrun = [line["custom_id"] for line in output], [line["custom_id"] for line in errors]
    assert sorted(ran + unrun) == sorted(custom_ids)  # every line once, in one file or the other
    assert ran + unrun != [] and ran == [c for c in custom_ids if c in set(ran)]  # input order

    assert_one_row_per_line(batch.id, ran, output)
    time.sleep(1)  # nothing starts after the batch is cancelled
    assert len(mock_upstream.peers) == upstream_at_cancel
    assert UsageRecord.objects.filter(batch_id=batch.id).count() == len(ran)
    assert client.batches.cancel(batch.id).status == "cancelled"  # a retried cancel succeeds, changing nothing


def test_legacy_completions_batch_completes(url: str, alice: Party, routes: None, worker_log: Path) -> None:
    client = sdk(url, alice)
    lines = [{"custom_id": f"c-{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "mock", "prompt": "Say hello", "max_tokens": 5}} for i in range(5)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint="/v1/completions",
                                  completion_window="24h")
    done = wait_for(client, batch.id, {"completed"}, timeout=30, log=worker_log)
    output = parse_jsonl(client.files.content(done.output_file_id).read())  # type: ignore[arg-type]
    assert [line["custom_id"] for line in output] == [f"c-{i}" for i in range(5)]
    assert {Completion.model_validate(line["response"]["body"]).choices[0].text for line in output} == {
        "Hello from the mock."}
    assert [r.endpoint for r in assert_one_row_per_line(batch.id, [f"c-{i}" for i in range(5)], output)] == [
        "completions"] * 5


def test_lines_the_upstream_refuses_go_to_the_error_file_with_the_v1_answer(
    url: str, alice: Party, routes: None, mock_upstream_url: str, worker_log: Path
) -> None:
    make_route("refusing", upstream_model="mock-400", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    client = sdk(url, alice)
    custom_ids = [f"bad-{i}" for i in range(4)]
    batch = client.batches.create(input_file_id=upload(client, [chat_line(c, model="refusing") for c in custom_ids]),
                                  endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(client, batch.id, {"completed"}, timeout=30, log=worker_log)
    counts = done.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (4, 0, 4)
    assert done.output_file_id is None and done.error_file_id is not None
    content = client.files.content(done.error_file_id).read()
    assert mock_upstream.SECRET_BODY_MARKER.encode() not in content and b"127.0.0.1" not in content
    errors = parse_jsonl(content)
    assert [line["custom_id"] for line in errors] == custom_ids
    for line in errors:
        assert line["error"] is None and line["response"]["status_code"] == 400, line
        assert set(line["response"]["body"]["error"]) >= {"message", "type", "code"}, line
    rows = assert_one_row_per_line(batch.id, custom_ids, [])
    assert {(r.status_code, r.end_reason) for r in rows} == {(400, "upstream_error")}


def key_for_other_model(party: Party) -> str:
    return make_key(party.tenant, allowed_models=["slow"])[1]


INVALID = {
    "bad JSON line": ([chat_line("a"), b"{not json", chat_line("c")], [("invalid_json_line", 2)]),
    "wrong url": ([chat_line("a"), {**chat_line("b"), "url": "/v1/embeddings"}], [("invalid_url", 2)]),
    "duplicate custom_id": ([chat_line("a"), chat_line("b"), chat_line("a")], [("duplicate_custom_id", 3)]),
    "unknown model": ([chat_line("a", model="no-such-model"), chat_line("b", model="no-such-model")],
                      [("model_not_found", 1), ("model_not_found", 2)]),
    "model the key may not use": ([chat_line("a"), chat_line("b")], [("model_not_found", 1), ("model_not_found", 2)]),
    "method GET": ([chat_line("a"), {**chat_line("b"), "method": "GET"}], [("invalid_method", 2)]),
    "no custom_id": ([{k: v for k, v in chat_line("a").items() if k != "custom_id"}],
                     [("missing_required_parameter", 1)]),
    "two models": ([chat_line("a"), chat_line("b", model="slow")], [("mismatched_model", 2)]),
    "stream": ([chat_line("a"), {**chat_line("b"), "body": {**chat_line("b")["body"], "stream": True}}],
               [("invalid_value", 2)]),
    "empty messages": ([{**chat_line("a"), "body": {"model": "mock", "messages": []}}], [("invalid_value", 1)]),
}


def test_invalid_input_fails_the_batch_with_openais_errors_and_runs_nothing(
    url: str, alice: Party, routes: None, worker_log: Path
) -> None:
    """Every case at once (one batch each), so the worker validates them together; all mismatches are reported."""
    upstream_before = len(mock_upstream.peers)
    other_key = key_for_other_model(alice)
    batches = {}
    for case, (lines, _) in INVALID.items():
        client = sdk(url, other_key if case == "model the key may not use" else alice.secret)
        data = b"".join(line + b"\n" if isinstance(line, bytes) else jsonl([line]) for line in lines)
        batches[case] = client.batches.create(input_file_id=upload(client, data), endpoint="/v1/chat/completions",
                                              completion_window="24h").id
    client = sdk(url, alice)
    mismatches = {}
    for case, batch_id in batches.items():
        failed = wait_for(client, batch_id, {"failed"}, timeout=30, log=worker_log)
        assert failed.failed_at is not None and failed.output_file_id is None and failed.error_file_id is None
        assert failed.errors is not None and failed.errors.data and all(e.message for e in failed.errors.data)
        found = [(e.code, e.line) for e in failed.errors.data]
        expected = INVALID[case][1]
        if case in ("unknown model", "model the key may not use"):  # one error per line, or only the first
            ok = found[0] == expected[0] and {code for code, _ in found} == {"model_not_found"}
        else:
            ok = found == expected
        if not ok:
            mismatches[case] = found
    assert mismatches == {}
    # Any key of the tenant lists its batches, newest first; the SDK pages through them with `after`.
    assert [b.id for b in client.batches.list(limit=3)] == list(reversed(batches.values()))
    assert not UsageRecord.objects.filter(tenant=alice.tenant).exists()
    assert not BatchLine.objects.filter(batch__public_id__in=batches.values()).exists()
    assert len(mock_upstream.peers) == upstream_before


def test_files_of_a_batch_through_the_sdk_and_bob_sees_none_of_alices(
    url: str, alice: Party, bob: Party, routes: None, worker_log: Path
) -> None:
    client, other = sdk(url, alice), sdk(url, bob)
    file_id = upload(client, [chat_line("one"), chat_line("two")], name="two-lines.jsonl")
    assert client.files.content(file_id).read() == jsonl([chat_line("one"), chat_line("two")])
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(client, batch.id, {"completed"}, timeout=60, log=worker_log)
    assert done.output_file_id is not None

    uploaded, written = client.files.retrieve(file_id), client.files.retrieve(done.output_file_id)
    assert (uploaded.filename, uploaded.purpose, uploaded.status) == ("two-lines.jsonl", "batch", "processed")
    assert (written.purpose, written.filename) == ("batch_output", f"{batch.id}_output.jsonl")
    assert written.bytes == len(client.files.content(done.output_file_id).read())
    listed = client.files.list()
    assert [f.id for f in listed.data] == [done.output_file_id, file_id]  # newest first
    assert [f.id for f in client.files.list(purpose="batch").data] == [file_id]
    assert [b.id for b in client.batches.list().data] == [batch.id]
    assert [f.id for f in client.files.list(limit=1)] == [done.output_file_id, file_id]  # the SDK pages with after
    assert [f.id for f in client.files.list(order="asc")] == [file_id, done.output_file_id]

    assert other.files.list().data == [] and other.batches.list().data == []
    for attempt in (lambda: other.batches.retrieve(batch.id), lambda: other.batches.cancel(batch.id),
                    lambda: other.files.retrieve(file_id), lambda: other.files.content(done.output_file_id),
                    lambda: other.files.delete(file_id)):
        with pytest.raises(openai.NotFoundError):
            attempt()
    with pytest.raises((openai.NotFoundError, openai.BadRequestError)):
        other.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")

    deleted = client.files.delete(file_id)
    assert (deleted.id, deleted.deleted) == (file_id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)
    assert [f.id for f in client.files.list().data] == [done.output_file_id]
    assert client.batches.retrieve(batch.id).input_file_id == file_id  # the batch still names its input
    with pytest.raises(openai.ConflictError) as finished:
        client.batches.cancel(batch.id)
    assert "completed" in finished.value.message


def test_a_budget_refusal_fails_its_line_into_the_error_file_and_the_batch_goes_on(
    url: str, alice: Party, routes: None, worker_log: Path
) -> None:
    alice.tenant.batch_tier = "low"  # two lines at a time, so the refusals come once the spend nears the cap
    alice.tenant.save(update_fields=["batch_tier"])
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.005"), period="month")
    client = sdk(url, alice)
    custom_ids = [f"capped-{i}" for i in range(12)]
    batch = client.batches.create(input_file_id=upload(client, [chat_line(c) for c in custom_ids]),
                                  endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(client, batch.id, {"completed"}, timeout=30, log=worker_log)
    counts = done.request_counts
    assert counts is not None and counts.total == 12 and counts.completed + counts.failed == 12
    assert counts.completed >= 1 and counts.failed >= 1, counts

    output = parse_jsonl(client.files.content(done.output_file_id).read())  # type: ignore[arg-type]
    errors = parse_jsonl(client.files.content(done.error_file_id).read())  # type: ignore[arg-type]
    assert (len(output), len(errors)) == (counts.completed, counts.failed)
    assert sorted(line["custom_id"] for line in output + errors) == sorted(custom_ids)
    for line in errors:
        assert line["error"] is None and line["response"]["status_code"] == 429, line
        assert line["response"]["body"]["error"]["code"] == "insufficient_quota", line

    rows = {r.custom_id: r for r in UsageRecord.objects.filter(batch_id=batch.id)}
    assert sorted(rows) == sorted(custom_ids)  # refused lines leave their row too, as /v1's refusals do
    assert {rows[line["custom_id"]].status_code for line in errors} == {429}
    assert {rows[line["custom_id"]].status_code for line in output} == {200}
    spent = sum(r.cost_picos for r in rows.values())
    assert spent == settled(budget).spent_picos <= budget.amount_micros * 10**6


def test_bad_create_requests_are_refused_with_the_parameter_named(url: str, alice: Party, routes: None) -> None:
    client = sdk(url, alice)
    file_id = upload(client, [chat_line("a")])
    good = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    for change, param in [({"completion_window": "1h"}, "completion_window"), ({"endpoint": "/v1/responses"}, "endpoint"),
                          ({"input_file_id": "file-doesnotexist"}, "input_file_id"),
                          ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
                          ({"metadata": {"k": "v" * 513}}, "metadata")]:
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as refused:
            client.batches.create(**{**good, **change})  # type: ignore[arg-type]
        assert refused.value.body["param"].startswith(param), (change, refused.value.body)  # type: ignore[index]
    assert client.batches.list().data == []
