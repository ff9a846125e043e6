"""A real Celery worker with embedded beat runs the scheduled jobs: on the filesystem transport and on Redis."""

from __future__ import annotations

import importlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.apps import apps
from django.db import connection

from billing.models import UsageRecord, UsageRollup

from ..conftest import Party
from ..live import celery_worker

pytestmark = pytest.mark.django_db(transaction=True)  # the worker process must see committed rows


@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_beat_schedules_the_rollup_and_the_worker_runs_it(broker: str, alice: Party, tmp_path: Path) -> None:
    if broker == "redis" and not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL (a real Redis server)")
    migration = importlib.import_module("billing.migrations.0005_default_schedules")
    migration.create_schedules(apps, None)
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    PeriodicTask.objects.filter(name="Roll up usage").update(interval=every_second)  # as an operator would, in the admin
    UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", public_model="gpt-4o",
                               end_reason="complete", status_code=200, cost_picos=1234 * 10**6, created_at=datetime.now(UTC))
    env = {"TOLLGATE_DATA_DIR": str(tmp_path)}
    if broker == "filesystem":
        env["REDIS_URL"] = ""
    log = tmp_path / "worker.log"
    with celery_worker(connection.settings_dict["NAME"], log, **env) as worker:
        deadline = time.monotonic() + 60
        while not UsageRollup.objects.exists() and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.25)
    output = log.read_text(errors="replace")
    assert UsageRollup.objects.filter(granularity="day", tenant=alice.tenant).get().cost_picos == 1234 * 10**6, output[-3000:]
    assert "rolled up 1 ledger rows" in output
    assert ("filesystem://" in output) == (broker == "filesystem")
