"""The batch executor: parts under leases, lines through the /v1 path, cancel, expiry, dead workers, exact money."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Sum
from django.utils import timezone

from accounts.models import ApiKey
from batches import finalize, leases, lines, pace, runner
from batches.models import Batch, BatchLine, BatchPart
from billing import budgets
from billing.models import Budget, Price, UsageRecord
from billing.services import discounted
from proxy import routing, upkeep
from proxy.db import db_step
from proxy.models import ModelRoute

from ..conftest import Party
from ..factories import make_route
from .running import ledger_picos, line, read_file, rows_of, running_batch


@pytest.fixture
def mock(alice: Party, files_dir: Any, mock_upstream_url: str, settings: Any) -> Party:
    """alice, with the mock provider's models routed and priced."""
    settings.TOLLGATE_ROUTES_CACHE_SECONDS = 0
    for name in ("mock", "mock-400"):
        make_route(name, upstream_model=name, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    Price.objects.create(model="mock", input_per_million=Decimal("100"), output_per_million=Decimal("300"))
    routing.invalidate()
    return alice


def test_each_line_runs_through_the_v1_path_with_one_row_each(mock: Party, client: Any) -> None:
    batch = running_batch(mock, [line(f"req-{i}") for i in range(5)], part_lines=2)
    runner.send_parts(batch)  # eager: each part runs here
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == (Batch.Status.COMPLETED, 5, 0)
    assert batch.completed_at is not None and batch.error_file is None
    output = read_file(batch.output_file)
    assert [o["custom_id"] for o in output] == [f"req-{i}" for i in range(5)]  # input order
    rows = {r.custom_id: r for r in rows_of(batch)}
    assert len(rows) == 5 and all(r.status_code == 200 and r.endpoint == "chat" and r.key_id == mock.key.pk
                                  for r in rows.values())
    direct = client.post("/v1/chat/completions", line("direct")["body"], content_type="application/json",
                         headers=mock.auth).json()
    for answer in output:
        assert answer["id"].startswith("batch_req_") and answer["error"] is None
        response = answer["response"]
        assert response["status_code"] == 200
        assert response["request_id"] == rows[answer["custom_id"]].request_id.hex
        body = response["body"]
        assert body["object"] == "chat.completion" and body["model"] == direct["model"]
        assert body["choices"] == direct["choices"] and body["usage"] == direct["usage"]
    assert batch.output_file.purpose == "batch_output" and batch.output_file.tenant_id == mock.tenant.pk
    assert batch.output_file.filename == f"{batch.public_id}_output.jsonl"
    assert set(BatchPart.objects.filter(batch=batch).values_list("state", flat=True)) == {"done"}


def test_the_discount_is_the_routes_else_the_prices_exact_to_the_pico(mock: Party) -> None:
    Price.objects.filter(model="mock").update(batch_discount_percent=Decimal("50"))
    full = Price.objects.get(model="mock").cost_picos(prompt_tokens=10, completion_tokens=5)
    batch = running_batch(mock, [line("a")])
    runner.send_parts(batch)
    assert [r.cost_picos for r in rows_of(batch)] == [full // 2]
    ModelRoute.objects.filter(name="mock").update(batch_discount_percent=Decimal("33.33"))
    routing.invalidate()
    second = running_batch(mock, [line("a")])
    runner.send_parts(second)
    (row,) = rows_of(second)
    assert row.cost_picos == discounted(full, Decimal("33.33")) == (full * 6667 * 2 + 10_000) // 20_000
    assert row.gate["batch_discount_percent"] == "33.33"


def test_a_budget_refusal_fails_its_line_and_the_batch_goes_on_with_exact_money(mock: Party, settings: Any) -> None:
    budget = Budget.objects.create(tenant=mock.tenant, amount=Decimal("0.01"), period="day")
    lines_in = [line("small-1"), line("huge", max_tokens=100_000), line("small-2")]
    batch = running_batch(mock, lines_in)
    runner.send_parts(batch)
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == (Batch.Status.COMPLETED, 2, 1)
    assert [o["custom_id"] for o in read_file(batch.output_file)] == ["small-1", "small-2"]
    (refused,) = read_file(batch.error_file)
    assert refused["custom_id"] == "huge" and refused["response"]["status_code"] == 429
    assert refused["response"]["body"]["error"]["code"] == "insufficient_quota"
    rows = {r.custom_id: r for r in rows_of(batch)}
    assert rows["huge"].status_code == 429 and rows["huge"].end_reason == "rejected" and rows["huge"].cost_picos == 0
    state = budgets.status(budget)
    assert ledger_picos(batch) > 0 and (state.spent_picos, state.reserved_micros) == (ledger_picos(batch), 0)


def test_a_provider_error_after_retries_fails_the_line_with_the_providers_status(mock: Party) -> None:
    batch = running_batch(mock, [line("bad", model="mock-400")])
    runner.send_parts(batch)
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == (Batch.Status.COMPLETED, 0, 1)
    (error,) = read_file(batch.error_file)
    assert error["response"]["status_code"] == 400 and set(error["response"]["body"]["error"]) >= {"message", "code"}
    assert "UPSTREAM-SECRET" not in str(error)
    assert [r.status_code for r in rows_of(batch)] == [400]


def test_a_revoked_key_fails_every_line_as_v1_would(mock: Party) -> None:
    batch = running_batch(mock, [line("a"), line("b")])
    ApiKey.objects.filter(pk=mock.key.pk).update(revoked_at=timezone.now())
    runner.send_parts(batch)
    batch.refresh_from_db()
    assert (batch.completed, batch.failed) == (0, 2)
    errors = read_file(batch.error_file)
    assert {e["response"]["status_code"] for e in errors} == {401}
    assert errors[0]["response"]["body"]["error"]["message"] == "This API key has been revoked."
    assert rows_of(batch) == []  # as /v1 writes no row for a refused key


def test_a_model_the_key_may_not_use_fails_each_line_with_403(mock: Party) -> None:
    ApiKey.objects.filter(pk=mock.key.pk).update(allowed_models=["other"])
    batch = running_batch(mock, [line("a")])
    runner.send_parts(batch)
    (error,) = read_file(Batch.objects.get(pk=batch.pk).error_file)
    assert error["response"]["status_code"] == 403
    assert error["response"]["body"]["error"]["code"] == "model_not_allowed"


def test_lines_run_concurrently_on_one_loop_up_to_the_queues_concurrency(mock: Party, settings: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    settings.TOLLGATE_BATCH_CONCURRENCY = {**settings.TOLLGATE_BATCH_CONCURRENCY, "default": 3}
    flight, peak, loops = [0], [0], set()
    real = runner.run_line

    async def counting(*args: Any, **kwargs: Any) -> Any:
        loops.add(asyncio.get_running_loop())
        flight[0] += 1
        peak[0] = max(peak[0], flight[0])
        await asyncio.sleep(0.05)
        try:
            return await real(*args, **kwargs)
        finally:
            flight[0] -= 1

    monkeypatch.setattr(runner, "run_line", counting)
    batch = running_batch(mock, [line(f"r{i}") for i in range(10)])
    runner.send_parts(batch)
    assert peak[0] == 3 and len(loops) == 1
    assert Batch.objects.get(pk=batch.pk).completed == 10


def test_a_rate_limit_refusal_waits_and_retries_with_no_extra_row(mock: Party, settings: Any) -> None:
    # A key allowing 4 requests in flight: a batch may take half, 2 at a time, however many it runs at once.
    ApiKey.objects.filter(pk=mock.key.pk).update(max_concurrent=4)
    settings.TOLLGATE_BATCH_CONCURRENCY = {**settings.TOLLGATE_BATCH_CONCURRENCY, "default": 5}
    batch = running_batch(mock, [line(f"r{i}", model="mock") for i in range(5)])
    runner.send_parts(batch)
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == (Batch.Status.COMPLETED, 5, 0)
    rows = rows_of(batch)
    assert len(rows) == 5 and {r.status_code for r in rows} == {200}
    assert UsageRecord.objects.filter(tenant=mock.tenant, status_code=429).count() == 0


def test_the_batch_share_of_rate_limits_uses_the_interactive_counters(mock: Party) -> None:
    ApiKey.objects.filter(pk=mock.key.pk).update(requests_per_minute=10, tokens_per_minute=1001, max_concurrent=1)
    from accounts.keys import caller_by_id

    caller = lines.batch_caller(caller_by_id(mock.key.pk))
    assert (caller.key_limits.requests_per_minute, caller.key_limits.tokens_per_minute,
            caller.key_limits.max_concurrent) == (5, 500, 1)
    assert caller.key_prefix == mock.key.prefix  # the same scope, so the same counters as /v1


def test_a_claimed_line_is_never_run_again(mock: Party) -> None:
    batch = running_batch(mock, [line("a"), line("b"), line("c")])
    assert leases.claim(batch.pk, mock.tenant.pk, 1, "b") is not None
    assert leases.claim(batch.pk, mock.tenant.pk, 1, "b") is None  # a second claim of the same line loses
    runner.run_part(batch.part_rows.get().pk)
    assert [r.custom_id for r in rows_of(batch)] == ["a", "c"]
    # Its claimer never saved a result: once every part is done, it is reported as lost with its worker.
    assert BatchLine.objects.get(batch=batch, custom_id="b").state == "failed"
    assert [e["error"]["code"] for e in read_file(Batch.objects.get(pk=batch.pk).error_file)] == ["batch_worker_lost"]


def test_a_part_another_worker_holds_is_left_alone(mock: Party) -> None:
    batch = running_batch(mock, [line("a")])
    part = batch.part_rows.get()
    BatchPart.objects.filter(pk=part.pk).update(state="running", worker="elsewhere:1",
                                                lease_expires_at=timezone.now() + timedelta(seconds=30))
    runner.run_part(part.pk)
    assert rows_of(batch) == [] and BatchPart.objects.get(pk=part.pk).worker == "elsewhere:1"


def test_tend_gives_a_dead_workers_part_to_another_and_fails_its_running_lines(mock: Party) -> None:
    batch = running_batch(mock, [line("a"), line("b"), line("c")])
    part = batch.part_rows.get()
    # A worker claimed "a" and "b", finished "a", and died while "b" ran; its lease ran out.
    leases.save_result(leases.claim(batch.pk, mock.tenant.pk, 0, "a"), batch.pk, succeeded=True, status_code=200,
                       request_id="r", result=lines.output_line("a", lines.Outcome(200, {"ok": 1}, "r")))
    leases.claim(batch.pk, mock.tenant.pk, 1, "b")
    BatchPart.objects.filter(pk=part.pk).update(state="running", worker="dead:1",
                                                lease_expires_at=timezone.now() - timedelta(seconds=1))
    runner.tend()  # eager: the part is sent again and runs here
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == (Batch.Status.COMPLETED, 2, 1)
    assert [r.custom_id for r in rows_of(batch)] == ["c"]  # "a" and "b" never ran again
    (lost,) = read_file(batch.error_file)
    assert lost["custom_id"] == "b" and lost["response"] is None and lost["error"]["code"] == "batch_worker_lost"
    assert [o["custom_id"] for o in read_file(batch.output_file)] == ["a", "c"]


def test_tend_resends_a_pending_part_nobody_took(mock: Party, settings: Any) -> None:
    batch = running_batch(mock, [line("a")])
    BatchPart.objects.filter(batch=batch).update(sent_at=timezone.now() - timedelta(seconds=60))
    runner.tend()
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.COMPLETED


def cancel_after_first(monkeypatch: pytest.MonkeyPatch, **update: Any) -> list[str]:
    """Make the first line's execution cancel (or expire) the batch, then take long enough for a status check."""
    started: list[str] = []
    real = runner.run_line

    async def first_cancels(context: Any, custom_id: str, *args: Any, **kwargs: Any) -> Any:
        started.append(custom_id)
        if len(started) == 1:
            await db_step(lambda: Batch.objects.filter(public_id=context.batch_public_id).update(**update))()
            await asyncio.sleep(runner.WATCH_SECONDS * 3)
        return await real(context, custom_id, *args, **kwargs)

    monkeypatch.setattr(runner, "run_line", first_cancels)
    monkeypatch.setattr(runner, "WATCH_SECONDS", 0.05)
    return started


def test_cancel_stops_new_lines_and_in_flight_ones_finish(mock: Party, settings: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    settings.TOLLGATE_BATCH_CONCURRENCY = {**settings.TOLLGATE_BATCH_CONCURRENCY, "default": 1}
    started = cancel_after_first(monkeypatch, status=Batch.Status.CANCELLING, cancelling_at=timezone.now())
    batch = running_batch(mock, [line(f"r{i}") for i in range(6)], part_lines=3)
    began = time.monotonic()
    runner.send_parts(batch)
    assert time.monotonic() - began < 3
    batch.refresh_from_db()
    assert started == ["r0"] and [r.custom_id for r in rows_of(batch)] == ["r0"]  # the line in flight finished
    assert (batch.status, batch.completed, batch.failed) == (Batch.Status.CANCELLED, 1, 5)
    assert batch.cancelled_at is not None
    errors = read_file(batch.error_file)
    assert [e["custom_id"] for e in errors] == [f"r{i}" for i in range(1, 6)]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"} and all(e["response"] is None for e in errors)


def test_a_batch_past_its_window_expires_with_the_rest_unrun(mock: Party, settings: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    settings.TOLLGATE_BATCH_CONCURRENCY = {**settings.TOLLGATE_BATCH_CONCURRENCY, "default": 1}
    cancel_after_first(monkeypatch, expires_at=timezone.now() - timedelta(seconds=1))
    batch = running_batch(mock, [line(f"r{i}") for i in range(4)])
    runner.send_parts(batch)
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == (Batch.Status.EXPIRED, 1, 3)
    assert batch.expired_at is not None and len(read_file(batch.output_file)) == 1
    assert {e["error"]["code"] for e in read_file(batch.error_file)} == {"batch_expired"}


def test_tend_expires_a_batch_whose_parts_nobody_runs(mock: Party) -> None:
    batch = running_batch(mock, [line("a"), line("b")], expires_at=timezone.now() - timedelta(seconds=1))
    runner.tend()
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed) == (Batch.Status.EXPIRED, 0, 2)
    assert rows_of(batch) == [] and len(read_file(batch.error_file)) == 2


def test_per_queue_pace_limits_lines_started_per_window(mock: Party, settings: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    settings.TOLLGATE_BATCH_RATES = {"default": 2}
    monkeypatch.setattr(pace, "WINDOW", 1)
    starts: list[float] = []
    real = runner.run_line

    async def timed(*args: Any, **kwargs: Any) -> Any:
        starts.append(time.time())
        return await real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_line", timed)
    pace._local.clear()
    batch = running_batch(mock, [line(f"r{i}") for i in range(5)], queue="default")
    runner.send_parts(batch)
    windows = [int(t) for t in starts]
    assert len(starts) == 5 and max(windows.count(w) for w in set(windows)) <= 2
    assert Batch.objects.get(pk=batch.pk).completed == 5


def test_the_workers_upkeep_runs_on_the_parts_loop(mock: Party, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.TOLLGATE_UPKEEP = True
    seen: list[bool] = []
    real = runner.run_line

    async def watching(*args: Any, **kwargs: Any) -> Any:
        task = upkeep._tasks.get(asyncio.get_running_loop())
        seen.append(task is not None and not task.done())
        return await real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_line", watching)
    batch = running_batch(mock, [line("a")])
    runner.send_parts(batch)
    assert seen == [True]
    assert not any(not loop.is_closed() and not task.done() for loop, task in upkeep._tasks.items())


def test_counts_add_up_and_no_hold_or_slot_stays_open(mock: Party) -> None:
    ApiKey.objects.filter(pk=mock.key.pk).update(max_concurrent=10)
    budget = Budget.objects.create(tenant=mock.tenant, amount=Decimal("5"), period="day")
    batch = running_batch(mock, [line(f"r{i}") for i in range(7)] + [line("x", model="mock-400")], part_lines=3)
    runner.send_parts(batch)
    batch.refresh_from_db()
    assert batch.completed + batch.failed == batch.total == 8
    state = budgets.status(budget)
    assert (state.spent_picos, state.reserved_micros) == (ledger_picos(batch), 0)
    assert UsageRecord.objects.filter(batch_id=batch.public_id).aggregate(n=Sum("cost_picos"))["n"] > 0
    from proxy import metering

    assert metering.in_flight() == [] and not metering._unsettled


def test_the_lease_is_renewed_while_the_part_runs(mock: Party, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.TOLLGATE_BATCH_LEASE_SECONDS = 0.3  # renewed every 0.1 s
    monkeypatch.setattr(runner, "WATCH_SECONDS", 0.05)
    leases_seen: list[Any] = []
    real = runner.run_line

    async def slow(context: Any, *args: Any, **kwargs: Any) -> Any:
        for _ in range(4):
            await asyncio.sleep(0.2)
            leases_seen.append(await db_step(lambda: BatchPart.objects.get(batch__public_id=context.batch_public_id)
                                             .lease_expires_at)())
        return await real(context, *args, **kwargs)

    monkeypatch.setattr(runner, "run_line", slow)
    batch = running_batch(mock, [line("a")])
    runner.send_parts(batch)
    assert len(set(leases_seen)) >= 3 and leases_seen == sorted(leases_seen)  # moved on while the line ran
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.COMPLETED


def test_a_worker_that_lost_its_lease_starts_nothing_more_and_leaves_the_part(mock: Party, settings: Any,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings.TOLLGATE_BATCH_LEASE_SECONDS = 0.3
    settings.TOLLGATE_BATCH_CONCURRENCY = {**settings.TOLLGATE_BATCH_CONCURRENCY, "default": 1}
    monkeypatch.setattr(runner, "WATCH_SECONDS", 0.05)
    started: list[str] = []
    real = runner.run_line

    async def taken_over(context: Any, custom_id: str, *args: Any, **kwargs: Any) -> Any:
        started.append(custom_id)
        if len(started) == 1:  # meanwhile the upkeep job gave the part to another worker
            await db_step(lambda: BatchPart.objects.filter(batch__public_id=context.batch_public_id).update(
                worker="other:2", lease_expires_at=timezone.now() + timedelta(seconds=30)))()
            await asyncio.sleep(0.5)
        return await real(context, custom_id, *args, **kwargs)

    monkeypatch.setattr(runner, "run_line", taken_over)
    batch = running_batch(mock, [line("a"), line("b"), line("c")])
    runner.send_parts(batch)
    assert started == ["a"]
    part = BatchPart.objects.get(batch=batch)
    assert (part.state, part.worker) == ("running", "other:2")  # not marked done: the other worker finishes it
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.IN_PROGRESS


def test_a_worker_running_a_part_recovers_a_dead_processs_journal(mock: Party, settings: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    settings.TOLLGATE_UPKEEP = True
    begin = {"t": "b", "id": "d" * 32, "tenant_id": mock.tenant.pk, "key_id": mock.key.pk, "endpoint": "chat",
             "public_model": "mock", "provider": "mock", "upstream_model": "mock", "at": time.time(), "gate": {},
             "prompt_tokens": 10, "batch_id": "batch_of_the_dead", "custom_id": "lost-1"}
    dead = settings.TOLLGATE_JOURNAL_DIR / "deadhost-4242-0000dead-000001.journal"  # nobody holds its lock
    dead.write_text(json.dumps(begin) + "\n")
    real = runner.run_line

    async def waiting(*args: Any, **kwargs: Any) -> Any:
        rows = UsageRecord.objects.filter(batch_id="batch_of_the_dead")
        for _ in range(100):  # the upkeep's first pass replays dead journals at once
            if await db_step(rows.exists)():
                break
            await asyncio.sleep(0.05)
        return await real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_line", waiting)
    runner.send_parts(running_batch(mock, [line("a")]))
    row = UsageRecord.objects.get(batch_id="batch_of_the_dead")
    assert (row.custom_id, row.end_reason) == ("lost-1", "gateway_lost") and not dead.exists()


@pytest.mark.needs_redis
def test_the_queue_pace_is_counted_in_redis_for_every_worker(settings: Any) -> None:
    import random

    import redis
    from asgiref.sync import async_to_sync

    window = random.randrange(10**9, 2 * 10**9)  # a window of its own: nothing else counts in it

    async def three() -> list[int]:
        return [await pace.count("default", window) for _ in range(3)]

    assert async_to_sync(three)() == [1, 2, 3]
    client = redis.Redis.from_url(settings.TOLLGATE_MONEY_REDIS_URL)
    key = pace.window_key("default", window)
    assert int(client.get(key)) == 3 and 0 < client.ttl(key) <= 2 * pace.WINDOW
    client.delete(key)


def test_batch_lines_count_on_the_same_rate_counters_as_interactive_requests(mock: Party, client: Any) -> None:
    ApiKey.objects.filter(pk=mock.key.pk).update(requests_per_minute=10)  # a batch may start 5 a minute
    if time.time() % 60 > 50:  # all in one minute's window
        time.sleep(61 - time.time() % 60)
    batch = running_batch(mock, [line(f"r{i}") for i in range(3)])
    runner.send_parts(batch)
    answer = client.post("/v1/chat/completions", line("direct")["body"], content_type="application/json",
                         headers=mock.auth)
    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-limit-requests"] == "10"
    assert answer.headers["x-ratelimit-remaining-requests"] == "6"  # the batch's 3 lines and this request


def test_the_tend_job_is_scheduled_every_ten_seconds(db: None) -> None:
    import importlib

    from django.apps import apps
    from django_celery_beat.models import PeriodicTask

    migration = importlib.import_module("batches.migrations.0002_tend_schedule")
    migration.create_schedule(apps, None)  # a transactional test may have emptied the tables; it is idempotent
    migration.create_schedule(apps, None)
    (task,) = PeriodicTask.objects.filter(task="batches.tend_batches")
    assert (task.name, task.interval.every, task.interval.period, task.enabled) == ("Tend batches", 10, "seconds", True)


@pytest.mark.parametrize(("url", "body", "kind"), [
    ("/v1/embeddings", {"model": "mock", "input": "some text"}, "list"),
    ("/v1/completions", {"model": "mock", "prompt": "Say hello", "max_tokens": 5}, "text_completion"),
])
def test_embeddings_and_completions_lines_run_on_their_endpoints(mock: Party, url: str, body: dict[str, Any],
                                                                 kind: str) -> None:
    batch = running_batch(mock, [{"custom_id": "e1", "method": "POST", "url": url, "body": body}])
    runner.send_parts(batch)
    batch.refresh_from_db()
    assert (batch.status, batch.completed) == (Batch.Status.COMPLETED, 1)
    (answer,) = read_file(batch.output_file)
    assert answer["response"]["body"]["object"] == kind
    (row,) = rows_of(batch)
    assert row.endpoint == url.removeprefix("/v1/") and row.custom_id == "e1"
