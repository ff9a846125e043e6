"""Holds left by a dead process heal with no beat and no Celery at all: every serving process's upkeep releases holds
whose lease ran out (the beat job *Release expired budget holds* is only a second net).

The journal side (a killed process's rows written, its holds settled and its in-flight slots freed by another serving
process, again with no Celery) is tests/faults/test_crash.py::test_killed_worker_leaves_every_row_and_heals.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from billing import budgets, holds
from billing.models import Budget

from ..conftest import Party
from ..live import tollgate_server

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see the rows

LEASE = 8  # the upkeep looks every quarter lease: every 2 s


def test_a_dead_process_hold_is_released_by_a_serving_process_without_beat(alice: Party, tmp_path: Path) -> None:
    holds.reset_backend()
    backend = holds.backend()  # Redis when REDIS_URL is set, else the database: as the server will use
    budget = budgets.spec_of(Budget.objects.select_related("tenant").get(
        pk=Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="lifetime").pk))
    # Held by a process that died an hour ago: nothing will ever renew or settle it.
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert async_to_sync(backend.reserve)("died-holding", (budget,), 250_000, hour_ago).admitted
    assert backend.totals(budget, budgets.LIFETIME_START) == (0, 250_000)
    env = {"TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_RESERVATION_LEASE_SECONDS": str(LEASE)}
    with tollgate_server(connection.settings_dict["NAME"], tmp_path / "server.log", **env):
        started = time.monotonic()
        while backend.totals(budget, budgets.LIFETIME_START) != (0, 0):
            assert time.monotonic() - started < 3 * LEASE, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.2)
