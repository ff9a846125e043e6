"""Batch workers run below the web processes' CPU priority: interactive /v1 keeps the cores when both compete."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from django.conf import settings

from batches import priority

from ..live import celery_process


def niceness(pid: int) -> int:
    # /proc/<pid>/stat: the command may hold spaces, so count fields after its closing parenthesis (nice is field 19).
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16])


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def worker_nicenesses(queues: str, tmp_path: Path, **env: str) -> tuple[int, list[int]]:
    """Start a worker on ``queues`` (two pool processes); return the niceness of its main process and its pool's."""
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test", "TOLLGATE_DATA_DIR": str(tmp_path),
                   **env}
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "worker.log"
    args = ["worker", "--loglevel", "INFO", "--pool", "prefork", "--concurrency", "2", "--queues", queues,
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with celery_process(args, environment, log) as process:
        deadline = time.monotonic() + 60
        while " ready." not in log.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        pool = children(process.pid)
        assert len(pool) == 2, pool
        return niceness(process.pid), [niceness(child) for child in pool]


def test_only_workers_on_batch_queues_count_as_batch_workers() -> None:
    tiers = settings.TOLLGATE_QUEUES
    assert priority.consumes_batches({"celery", tiers["low"]})
    assert priority.consumes_batches({"gpu-batches"})  # a route's own batch queue
    assert not priority.consumes_batches({"celery"})
    assert not priority.consumes_batches(set())


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads niceness from /proc (Linux)")
def test_a_worker_on_a_batch_queue_runs_below_the_web_processes_and_a_housekeeping_worker_does_not(
        tmp_path: Path) -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    main, pool = worker_nicenesses(f"celery,{settings.TOLLGATE_QUEUES['default']}", tmp_path / "batch")
    assert main == max(ours, 10) and pool == [max(ours, 10)] * 2
    main, pool = worker_nicenesses("celery", tmp_path / "housekeeping")
    assert main == ours and pool == [ours, ours]
    main, pool = worker_nicenesses(settings.TOLLGATE_QUEUES["high"], tmp_path / "off", TOLLGATE_BATCH_NICE="0")
    assert main == ours and pool == [ours, ours]
