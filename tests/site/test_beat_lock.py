"""Two beat processes (two hosts) send each scheduled run once: only the holder of the beat lock sends, and the standby
takes over when the holder is killed (README, Running Celery). One real ``celery beat`` per process, a job every second.

The lock is Redis's when REDIS_URL is set, else PostgreSQL's advisory lock, else a file in DATA_DIR (SQLite). The runs
are counted on the broker: every message the beats published, with the process that published it.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from gateway_site import beat

from ..live import celery_process

pytestmark = pytest.mark.django_db(transaction=True)  # the beats read the schedule from the test database

LEASE = 4  # seconds: the standby checks every second
TASK = "tests.beat_lock.probe"  # never run: no worker listens to the queue


def beat_env(tmp_path: Path, kind: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test",
        "TOLLGATE_LIVE_TEST_DATABASE": connection.settings_dict["NAME"],
        "TOLLGATE_BEAT_LOCK_SECONDS": str(LEASE),
        "TOLLGATE_DATA_DIR": str(tmp_path / "data"),  # the file lock, and the filesystem broker without Redis
        "TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"),
        "TOLLGATE_METRICS": "off",
    }
    if kind != "redis":
        for name in ("REDIS_URL", "TOLLGATE_MONEY_REDIS_URL", "TOLLGATE_CACHE_REDIS_URL", "TOLLGATE_BROKER_URL",
                     "TOLLGATE_CHANNELS_REDIS_URL"):
            env[name] = ""
    return env


def kinds() -> list[Any]:
    return [pytest.param("redis", marks=pytest.mark.needs_redis),
            pytest.param("postgresql", marks=pytest.mark.needs_postgres),
            pytest.param("file", marks=pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")),
                                                          reason="the file lock is SQLite's"))]


class Broker:
    """The messages the beats published to one queue: (publishing pid, publication time as seen here)."""

    def __init__(self, kind: str, queue: str, data_dir: Path) -> None:
        self.kind, self.queue, self.folder = kind, queue, data_dir / "celery" / "queue"
        self.seen: dict[str, tuple[int, float]] = {}
        if kind == "redis":
            import redis

            self.redis = redis.Redis.from_url(os.environ["REDIS_URL"])
            self.redis.delete(queue, beat.REDIS_KEY)

    def raw(self) -> list[bytes]:
        if self.kind == "redis":
            return list(self.redis.lrange(self.queue, 0, -1))
        return [path.read_bytes() for path in self.folder.glob("*.msg")] if self.folder.exists() else []

    def poll(self) -> dict[str, tuple[int, float]]:
        for data in self.raw():
            message = json.loads(data)
            headers = message["headers"]
            if headers.get("task") == TASK and headers["id"] not in self.seen:
                # origin is "gen<pid>@<host>": the process that published the message
                self.seen[headers["id"]] = (int(headers["origin"].split("@")[0].removeprefix("gen")), time.monotonic())
        return self.seen

    def watch(self, seconds: float) -> None:
        """Note each message as it arrives, for this many seconds."""
        self.wait(lambda _: False, seconds, expire=False)

    def wait(self, condition: Any, timeout: float, *, expire: bool = True) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if condition(self.poll()):
                return time.monotonic() - started
            time.sleep(0.1)
        if not expire:
            return timeout
        raise AssertionError(f"not within {timeout} s: {sorted(self.poll().values(), key=lambda v: v[1])}")


@pytest.mark.parametrize("kind", kinds())
def test_two_beats_send_each_run_once_and_the_standby_takes_over(tmp_path: Path, kind: str) -> None:
    queue = f"tollgate-beat-lock-{uuid.uuid4().hex[:8]}"
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.exclude(task=TASK).update(enabled=False)
    PeriodicTask.objects.create(name="beat lock probe", task=TASK, interval=every_second, queue=queue)
    env = beat_env(tmp_path, kind)
    broker = Broker(kind, queue, tmp_path / "data")
    args = ["beat", "--loglevel", "INFO"]
    with celery_process(args, env, tmp_path / "first.log") as first:
        broker.wait(lambda seen: len(seen) >= 1, 20)
        with celery_process(args, env, tmp_path / "second.log") as second:
            broker.watch(3)  # the second beat is up (Django loaded) and standing by
            window_start = time.monotonic()
            broker.watch(6)
            during = [(pid, at) for pid, at in broker.poll().values() if at >= window_start]
            # One sender, once a second: about six runs, all from the first beat.
            assert {pid for pid, _ in during} == {first.pid}, (tmp_path / "second.log").read_text()[-2000:]
            assert 4 <= len(during) <= 7
            log = (tmp_path / "second.log").read_text()
            assert "holding the" not in log  # it never held the lock

            first.send_signal(signal.SIGKILL)  # no chance to let go of the lock
            first.wait(10)
            killed = time.monotonic()
            took = broker.wait(lambda seen: any(pid == second.pid for pid, _ in seen.values()), LEASE + 5)
            # The lease runs out at most LEASE s after the kill; the standby looks every LEASE / 4 s.
            assert took <= LEASE + LEASE / 4 + 1.5
            broker.watch(2)
            after = [pid for pid, at in broker.poll().values() if at >= killed]
            assert set(after) == {second.pid} and len(after) >= 2
            assert "holding the" in (tmp_path / "second.log").read_text()
