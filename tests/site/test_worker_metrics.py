"""A Celery worker with TOLLGATE_METRICS_BIND serves its own tasks' metrics (README, Metrics): under Docker Compose
it runs in a container of its own, with a metrics directory of its own, that the web's scrape never reads."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from gateway_site.celery import app as celery_app

from ..live import celery_process, free_port, wait_for_port
from .worker_tasks import FAILS, SUCCEEDS

pytestmark = pytest.mark.django_db(transaction=True)  # beat's scheduler writes its rows into the test database


def live_env(tmp_path: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test",
        "TOLLGATE_LIVE_TEST_DATABASE": connection.settings_dict["NAME"],
        "TOLLGATE_METRICS": "on",
        "TOLLGATE_METRICS_DIR": str(tmp_path / "worker-metrics"),  # the worker's own, as in its own container
        "TOLLGATE_METRICS_BIND": f"127.0.0.1:{port}",
        "TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"),
    }


def task_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, for the Celery task metrics of a scrape."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("tollgate_celery_task"):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True


@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")  # send_task publishes, as wanted
def test_the_worker_serves_its_own_task_metrics_and_beat_binds_nothing(tmp_path: Path) -> None:
    port = free_port()
    env = live_env(tmp_path, port)
    # A queue of its own: a worker of another run on the same broker never takes these tasks.
    queue = f"tollgate-worker-metrics-{uuid.uuid4().hex[:8]}"
    worker_log = tmp_path / "worker.log"
    expected = {
        ("tollgate_celery_tasks_total", (("state", "success"), ("task", SUCCEEDS))): 2.0,
        ("tollgate_celery_tasks_total", (("state", "failure"), ("task", FAILS))): 1.0,
        ("tollgate_celery_task_failures_total", (("task", FAILS),)): 1.0,
        ("tollgate_celery_task_duration_seconds_count", (("task", SUCCEEDS),)): 2.0,
        ("tollgate_celery_task_duration_seconds_count", (("task", FAILS),)): 1.0,
    }
    worker = ["worker", "--loglevel", "INFO", "--concurrency", "1", "--queues", queue, "--include",
              "tests.site.worker_tasks", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with celery_process(worker, env, worker_log) as process:
        try:
            wait_for_port(port, process=process)
        except RuntimeError:
            pytest.fail(worker_log.read_text(errors="replace")[-3000:])
        # Published to the broker whatever the in-process eager setting says; the worker's pool child runs them.
        for name in (SUCCEEDS, FAILS, SUCCEEDS):
            celery_app.send_task(name, queue=queue)
        deadline = time.monotonic() + 20
        while True:
            r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            assert r.status_code == 200, r.text
            samples = task_samples(r.text)
            if all(samples.get(key) == value for key, value in expected.items()) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    log = worker_log.read_text(errors="replace")
    for key, value in expected.items():
        assert samples.get(key) == value, (key, samples, log[-3000:])
    assert "cannot listen" not in log
    # The scrape is the sum of the worker's directory, where its pool's child (another process id) ran the tasks.
    writers = {path.stem.rpartition("_")[2] for path in (tmp_path / "worker-metrics").glob("counter_*.db")}
    assert writers - {str(process.pid)}, writers

    # Beat, with the same environment, sends no worker_init: it never listens.
    beat_log = tmp_path / "beat.log"
    beat_env = {**env, "TOLLGATE_DATA_DIR": str(tmp_path / "beat"), "REDIS_URL": ""}  # sends anything due to a folder
    with celery_process(["beat", "--loglevel", "DEBUG"], beat_env, beat_log) as beat:
        deadline = time.monotonic() + 20
        while "beat: Waking up" not in beat_log.read_text(errors="replace") and time.monotonic() < deadline:
            assert beat.poll() is None, beat_log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        text = beat_log.read_text(errors="replace")
        assert "beat: Waking up" in text, text[-3000:]  # past beat_init and its first tick
        assert not listening(port)
