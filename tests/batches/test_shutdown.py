"""A worker shutting down warm (SIGTERM) stops starting lines, lets those in flight finish, and hands its part back
for another worker to resume at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from batches import runner, shutdown
from batches.models import Batch, BatchLine, BatchPart
from billing.models import Price
from proxy import routing

from bench import mock_upstream

from ..conftest import Party, make_party
from ..factories import make_route
from ..live import celery_process, serve_app
from .running import line, read_file, rows_of, running_batch


@pytest.fixture
def mock(alice: Party, files_dir: Any, mock_upstream_url: str, settings: Any) -> Party:
    settings.TOLLGATE_ROUTES_CACHE_SECONDS = 0
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    Price.objects.create(model="mock", input_per_million=Decimal("100"), output_per_million=Decimal("300"))
    routing.invalidate()
    return alice


@pytest.fixture(autouse=True)
def no_shutdown() -> Any:
    shutdown.reset()
    yield
    shutdown.reset()


def test_a_part_on_a_worker_shutting_down_is_handed_back_with_its_lines_in_flight_recorded(
        mock: Party, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.TOLLGATE_BATCH_CONCURRENCY = {**settings.TOLLGATE_BATCH_CONCURRENCY, "default": 2}
    monkeypatch.setattr(runner, "WATCH_SECONDS", 0.05)
    started: list[str] = []
    real = runner.run_line

    async def signalled(context: Any, custom_id: str, body: Any, size: int, stopped: Any) -> Any:
        started.append(custom_id)
        if custom_id == "r1":  # waits at the gate (a rate limit) until the part stops: it never runs
            while stopped() is None:
                await asyncio.sleep(0.01)
            return None
        shutdown.note_shutdown()  # SIGTERM reaches the worker while r0 runs
        await asyncio.sleep(0.3)
        return await real(context, custom_id, body, size, stopped)

    monkeypatch.setattr(runner, "run_line", signalled)
    sent: list[int] = []
    monkeypatch.setattr(runner, "publish_part", lambda part_id, queue: sent.append(part_id))
    batch = running_batch(mock, [line(f"r{i}") for i in range(5)])
    part = batch.part_rows.get()
    runner.run_part(part.pk)
    assert started == ["r0", "r1"]
    part.refresh_from_db()
    assert (part.state, part.worker, part.lease_expires_at) == (BatchPart.State.PENDING, "", None)
    assert sent == [part.pk]  # sent again at once
    assert list(BatchLine.objects.filter(batch=batch).values_list("custom_id", "state")) == [("r0", "succeeded")]
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.IN_PROGRESS

    shutdown.reset()  # another worker takes it
    monkeypatch.setattr(runner, "run_line", real)
    runner.run_part(part.pk)
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed, batch.error_file) == (Batch.Status.COMPLETED, 5, 0, None)
    assert [o["custom_id"] for o in read_file(batch.output_file)] == [f"r{i}" for i in range(5)]
    assert [r.custom_id for r in rows_of(batch)] == [f"r{i}" for i in range(5)]  # one row each


def test_a_part_whose_lines_all_started_finishes_on_the_stopping_worker(mock: Party, settings: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "WATCH_SECONDS", 0.05)
    real = runner.run_line

    async def signalled(*args: Any, **kwargs: Any) -> Any:
        shutdown.note_shutdown()
        await asyncio.sleep(0.2)
        return await real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_line", signalled)
    batch = running_batch(mock, [line("a"), line("b")])
    runner.run_part(batch.part_rows.get().pk)
    batch.refresh_from_db()
    assert (batch.status, batch.completed) == (Batch.Status.COMPLETED, 2)


# --- With a real worker (prefork pool, one child) stopped by SIGTERM while its part runs.


class SlowUpstream:
    """An OpenAI-compatible chat upstream answering after 0.5 s, counting requests per prompt (the custom_id)."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await mock_upstream.read_body(receive)
        with self.lock:
            self.seen[str(body["messages"][-1]["content"])] += 1
        await asyncio.sleep(0.5)
        await mock_upstream.send_json(send, 200, mock_upstream.CHAT_RESPONSE)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    with serve_app(app) as url:
        yield url


@contextmanager
def worker(name: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test",
           "TOLLGATE_LIVE_TEST_DATABASE": connection.settings_dict["NAME"], "TOLLGATE_DATA_DIR": str(tmp_path),
           "TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_UPKEEP": "on",
           "TOLLGATE_ROUTES_CACHE_SECONDS": "0", "TOLLGATE_BATCH_LEASE_SECONDS": str(LEASE),
           "TOLLGATE_BATCH_CONCURRENCY": ",".join(f"{q}=2" for q in settings.TOLLGATE_QUEUES.values())}
    log = tmp_path / f"{name}.log"
    args = ["worker", "--loglevel", "INFO", "--pool", "prefork", "--concurrency", "1", "--queues",
            settings.TOLLGATE_QUEUES["default"], "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat"]
    with celery_process(args, env, log) as process:
        until(lambda: " ready." in log.read_text(errors="replace") or process.poll() is not None, 60)
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        yield process


def until(condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.1)


LEASE = 300  # far longer than the test: a part that waited for its lease to run out would fail it


@pytest.mark.django_db(transaction=True)
@pytest.mark.needs_postgres
@pytest.mark.needs_redis
def test_sigterm_mid_part_hands_it_to_another_worker_with_no_line_lost(
        tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    from gateway_site.celery import app

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()  # no task of an earlier run is left in the queues
    settings.STORAGES = {**settings.STORAGES, "tollgate_files": {  # where the workers' data folder keeps files
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "files")}}}
    party = make_party("alice")
    upstream = SlowUpstream()
    with serving(upstream) as url:
        make_route("slow", upstream_model="slow", base_url=f"{url}/v1", provider_name="mock")
        Price.objects.create(model="slow", input_per_million=Decimal("100"), output_per_million=Decimal("300"))
        ids = [f"line-{i:02d}" for i in range(40)]
        lines = [{**line(c, model="slow"), "body": {"model": "slow", "max_tokens": 5,
                                                    "messages": [{"role": "user", "content": c}]}} for c in ids]
        batch = running_batch(party, lines, part_lines=20)  # two parts of 20 lines, 2 in flight: 5 s each
        monkeypatch.setitem(app.conf, "task_always_eager", False)  # sent to the broker, for the real workers
        with worker("first", tmp_path) as first:
            runner.send_parts(batch)
            until(lambda: BatchLine.objects.filter(batch=batch, state="succeeded").count() >= 4, 30)
            part = BatchPart.objects.get(batch=batch, state="running")
            stopped_at = time.monotonic()
            first.send_signal(signal.SIGTERM)  # warm shutdown, as docker stop or systemctl stop sends
            until(lambda: first.poll() is not None, 20)
            log = (tmp_path / "first.log").read_text(errors="replace")
            assert first.returncode == 0, log[-3000:]
        handed = BatchPart.objects.get(pk=part.pk)
        assert (handed.state, handed.worker, handed.lease_expires_at) == ("pending", "", None), log[-3000:]
        started = BatchLine.objects.filter(batch=batch).count()
        assert 4 <= started < 20 and not BatchLine.objects.filter(batch=batch, state="running").exists()
        with worker("second", tmp_path):
            until(lambda: Batch.objects.get(pk=batch.pk).status in ("completed", "failed", "expired"), 60)
        assert time.monotonic() - stopped_at < LEASE / 2  # resumed at once, not after the lease
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed, batch.error_file) == ("completed", 40, 0, None)
    assert [o["custom_id"] for o in read_file(batch.output_file)] == ids
    assert upstream.seen == Counter(ids)  # each line reached the provider once
    assert sorted(r.custom_id for r in rows_of(batch)) == ids
