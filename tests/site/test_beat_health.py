"""A dead beat is visible: /health/detailed names the beat lock's holder and when it last renewed it, and the metrics
carry tollgate_beat_heartbeat_age_seconds (README, Health and Metrics)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from prometheus_client.parser import text_string_to_metric_families

from gateway_site import beat, health_views, metrics

OPS_TOKEN = "ops-token-for-the-beat-tests-0123456789"


@pytest.fixture
def beat_lock(settings: Any, tmp_path: Path) -> Any:
    settings.DATA_DIR = tmp_path  # the file lock's place under SQLite
    settings.TOLLGATE_BEAT_LOCK_SECONDS = 20
    if beat.lock_kind() == "redis":
        import redis

        redis.Redis.from_url(settings.TOLLGATE_MONEY_REDIS_URL).delete(beat.REDIS_KEY)
    lock = beat.make_lock()
    yield lock
    lock.release()


def lock_report(monkeypatch: pytest.MonkeyPatch, settings: Any) -> dict[str, Any]:
    monkeypatch.setattr(health_views, "WORKER_PING", 0.2)  # no worker runs here
    settings.TOLLGATE_OPS_TOKEN = OPS_TOKEN
    answer = Client().get("/health/detailed", headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert answer.status_code == 200
    return answer.json()["celery"]["beat"]["lock"]  # type: ignore[no-any-return]


@pytest.mark.django_db(transaction=True)  # the report's threads read the database
def test_detailed_names_the_beat_lock_holder_and_nobody_once_it_lets_go(
        beat_lock: Any, monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    assert lock_report(monkeypatch, settings) == {"kind": beat.lock_kind(), "holder": None, "renewed_seconds_ago": None}
    assert beat_lock.hold()
    report = lock_report(monkeypatch, settings)
    assert report["kind"] == beat.lock_kind() and report["holder"] == beat.identity()
    assert 0 <= report["renewed_seconds_ago"] < 5
    beat_lock.release()
    assert lock_report(monkeypatch, settings)["holder"] is None


@pytest.mark.django_db(transaction=True)
def test_a_second_lock_is_refused_while_the_first_holds_and_taken_once_it_lets_go(beat_lock: Any) -> None:
    other = beat.make_lock()
    try:
        assert beat_lock.hold() and beat_lock.hold()  # renewing is holding
        assert not other.hold()
        beat_lock.release()
        assert other.hold()
        assert not beat_lock.hold()
    finally:
        other.release()


@pytest.mark.django_db(transaction=True)  # the scrape's source reads in a thread of its own
def test_metrics_carry_the_beat_heartbeat_age(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    if not metrics.enabled():
        pytest.skip("TOLLGATE_METRICS is off in this test run")
    monkeypatch.setattr(metrics.SOURCES["beat"], "read_at", float("-inf"))  # no reading cached by an earlier test
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.update(enabled=False)
    PeriodicTask.objects.create(name="beat heartbeat probe", task="billing.tasks.reap_expired_holds", interval=every,
                                last_run_at=timezone.now() - timedelta(seconds=300))
    found = {sample.name: sample.value for family in text_string_to_metric_families(metrics.render().decode())
             for sample in family.samples}
    assert 300 <= found["tollgate_beat_heartbeat_age_seconds"] < 330


def test_a_lock_store_that_does_not_answer_means_nobody_sends_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    from ..live import free_port

    lock = beat.RedisLock(f"redis://127.0.0.1:{free_port()}/7")
    with caplog.at_level("WARNING", logger="gateway_site.beat"):
        assert not lock.hold() and not lock.hold()
    assert [r.getMessage() for r in caplog.records].count(
        "beat: the lock in Redis cannot be reached (ConnectionError); not sending until it can") == 1


def test_the_beat_lock_works_on_a_redis_cluster(tmp_path: Path, settings: Any) -> None:
    from .. import redis_servers

    if reason := redis_servers.available():
        pytest.skip(reason)
    with redis_servers.cluster(tmp_path / "cluster") as url:
        settings.TOLLGATE_MONEY_REDIS_URL, settings.TOLLGATE_MONEY_REDIS_CLUSTER = url, True
        first, second = beat.RedisLock(url), beat.RedisLock(url)
        assert first.hold() and first.hold() and not second.hold()
        assert beat.status()["holder"] == beat.identity()
        first.release()
        assert second.hold() and not first.hold()
        second.release()
        assert beat.status()["holder"] is None
