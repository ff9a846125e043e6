"""A worker killed while a background response is at the provider: the dead process's journal gives the request its
one ledger row (replayed by the server's upkeep), and the Tend stored responses job fails the response as
worker_lost once it has been in progress past TOLLGATE_RESPONSES_LOST_SECONDS.

Real processes share PostgreSQL, Redis (also the broker) and a journal directory; the provider is the test's own,
which takes the request and never answers in time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from batches import background
from bench import mock_upstream
from billing.models import Price, UsageRecord
from proxy.models import StoredResponse

from ..conftest import Party, make_party
from ..factories import make_route
from ..live import celery_process, serve_app, tollgate_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.needs_postgres, pytest.mark.needs_redis]


class Stalling:
    """An OpenAI-compatible upstream that takes each request and answers only after a minute."""

    def __init__(self) -> None:
        self.arrived = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await mock_upstream.read_body(receive)
        self.arrived.set()
        await asyncio.sleep(60)
        await mock_upstream.send_json(send, 200, mock_upstream.CHAT_RESPONSE)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.fixture
def alice(transactional_db: None) -> Party:
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()  # the broker's queues too: no task of an earlier run
    return make_party("alice")


def test_a_worker_killed_at_the_provider_leaves_one_row_and_the_response_failed(alice: Party, tmp_path: Path) -> None:
    stalling = Stalling()
    env = {"TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_UPKEEP": "on",
           "TOLLGATE_RESERVATION_LEASE_SECONDS": "8", "TOLLGATE_ROUTES_CACHE_SECONDS": "0"}
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test",
                   "TOLLGATE_LIVE_TEST_DATABASE": connection.settings_dict["NAME"], **env}
    args = ["worker", "--loglevel", "INFO", "--concurrency", "1", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "--queues", f"celery,{settings.TOLLGATE_QUEUES['default']}"]
    with serve_app(stalling) as upstream_url:
        make_route("slow", upstream_model="slow", base_url=f"{upstream_url}/v1", provider_name="stalling")
        Price.objects.create(model="slow", input_per_million=Decimal("100"), output_per_million=Decimal("200"))
        with tollgate_server(connection.settings_dict["NAME"], tmp_path / "server.log", **env) as url, \
                celery_process(args, environment, tmp_path / "worker.log") as worker:
            r = httpx.post(f"{url}/v1/responses", headers=alice.auth, timeout=30,
                           json={"model": "slow", "input": "Take your time", "background": True})
            assert r.status_code == 200 and r.json()["status"] == "queued", r.text
            response_id = r.json()["id"]
            assert stalling.arrived.wait(60), (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
            assert StoredResponse.objects.get(pk=response_id).status == "in_progress"
            for pid in [*children(worker.pid), worker.pid]:
                os.kill(pid, signal.SIGKILL)
            # The server's upkeep replays the dead process's journal: the request's row, closed as lost.
            wait_for(lambda: UsageRecord.objects.filter(tenant=alice.tenant).exists(), 30, "the journal replayed")

    [row] = UsageRecord.objects.filter(tenant=alice.tenant)
    assert (row.endpoint, row.end_reason, row.key_id) == ("responses", "gateway_lost", alice.key.pk)
    assert row.cost_picos > 0  # the prompt reached the provider: it is billed
    stored = StoredResponse.objects.get(pk=response_id)
    assert stored.status == "in_progress"  # nobody is left to say otherwise, until the job below

    later = timezone.now() + timedelta(seconds=settings.TOLLGATE_RESPONSES_LOST_SECONDS + 1)
    assert background.fail_lost(later) == 1
    stored.refresh_from_db()
    assert stored.status == "failed" and stored.response["error"]["code"] == "worker_lost"
    assert UsageRecord.objects.filter(tenant=alice.tenant).count() == 1
