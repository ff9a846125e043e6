"""PostgreSQL or Redis cut off under load, through a TCP proxy the test controls (the services keep running).

- PostgreSQL away for OUTAGE seconds: requests keep being served, their rows are spooled (in the journal and in
  memory) and written when it is back: rows = requests, no duplicates, budget totals = ledger.
- Redis away: budgeted requests are refused 503 `service_unavailable` (`x-should-retry: true`), recorded as
  `gateway_unavailable`; unbudgeted ones go on; one log line for the outage, no traceback per request; served
  again within a second of Redis coming back; nothing left held.
"""

from __future__ import annotations

import asyncio
import os
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from django.db import connection
from django.db.models import Sum

from billing import budgets, keyspace
from billing.models import Budget, Price, UsageRecord

from ..conftest import Party, make_party
from ..factories import make_route
from ..live import tollgate_server
from .tcp_proxy import FaultProxy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.needs_postgres, pytest.mark.needs_redis]

OUTAGE = float(os.environ.get("TOLLGATE_FAULT_OUTAGE_SECONDS", "60"))
BODY = {"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": "Count to three please"}]}


def redis_client() -> object:
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


@pytest.fixture
def parties(transactional_db: None, mock_upstream_url: str) -> tuple[Party, Party]:
    """alice has a budget (so the gate needs Redis); bob has none."""
    redis_client().flushdb()  # type: ignore[attr-defined]
    alice, bob = make_party("alice"), make_party("bob")
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    Price.objects.create(model="mock", input_per_million=Decimal("100"), output_per_million=Decimal("200"))
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1000"), period="month")
    return alice, bob


async def load(url: str, parties: list[Party], seconds: float, during: object = None) -> list[httpx.Response]:
    """Send requests from 4 clients per party for ``seconds``; ``during`` runs alongside (it cuts and restores)."""
    answers: list[httpx.Response] = []
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30) as http:

        async def client(party: Party) -> None:
            while time.monotonic() < stop:
                answers.append(await http.post(f"{url}/v1/chat/completions", headers=party.auth, json=BODY))

        work = [client(p) for p in parties for _ in range(4)]
        if during is not None:
            work.append(during)  # type: ignore[arg-type]
        await asyncio.gather(*work)
    return answers


def wait_for(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.2)


def money_matches(party: Party) -> None:
    budget = Budget.objects.get(tenant=party.tenant)
    ledger = UsageRecord.objects.filter(tenant=party.tenant).aggregate(total=Sum("cost_picos"))["total"] or 0
    wait_for(lambda: budgets.status(budget).reserved_micros == 0, 30)
    assert budgets.status(budget).spent_picos == ledger
    assert int(redis_client().zcard(keyspace.leases(party.tenant.pk))) == 0  # type: ignore[attr-defined]


def test_database_outage_loses_no_row(parties: tuple[Party, Party], tmp_path: Path) -> None:
    alice, bob = parties
    database = connection.settings_dict
    with FaultProxy(int(database["PORT"] or 5432)) as proxy:
        env = {"DATABASE_URL": f"postgres://{database['USER']}@127.0.0.1:{proxy.port}/{database['NAME']}",
               "TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_ROUTES_CACHE_SECONDS": "60",
               "TOLLGATE_KEY_CACHE_SECONDS": str(int(OUTAGE) + 60)}
        with tollgate_server(database["NAME"], tmp_path / "server.log", **env) as url:

            async def outage() -> None:
                await asyncio.sleep(1.0)
                proxy.cut()
                await asyncio.sleep(OUTAGE)
                proxy.restore()

            # Warm the key cache, routes, prices and budgets, then load through an outage and a little after.
            answers = asyncio.run(load(url, [alice, bob], 0.5))
            answers += asyncio.run(load(url, [alice, bob], OUTAGE + 3, outage()))
            answers += asyncio.run(load(url, [alice, bob], 0.5))
            statuses = {a.status_code for a in answers}
            assert statuses == {200}, statuses
            wait_for(lambda: UsageRecord.objects.count() >= len(answers), 30)
    ids = [a.headers["x-request-id"] for a in answers]
    assert len(set(ids)) == len(ids)
    # Every answered request has its row, and there is no other row: rows = requests, no duplicates.
    assert UsageRecord.objects.filter(request_id__in=ids).count() == len(answers)
    assert UsageRecord.objects.count() == len(answers)
    money_matches(alice)


def test_redis_outage_fails_closed_and_recovers(parties: tuple[Party, Party], tmp_path: Path) -> None:
    alice, bob = parties
    redis_url = urlsplit(os.environ["REDIS_URL"])
    with FaultProxy(redis_url.port or 6379) as proxy:
        # The shortest lease: the process's upkeep reaps holds every 2 s, so it meets the 3 s cut too.
        env = {"REDIS_URL": f"redis://127.0.0.1:{proxy.port}{redis_url.path}",
               "TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_RESERVATION_LEASE_SECONDS": "8"}
        log = tmp_path / "server.log"
        with tollgate_server(connection.settings_dict["NAME"], log, **env) as url:
            asyncio.run(load(url, [alice, bob], 0.5))
            proxy.cut()
            during = asyncio.run(load(url, [alice, bob], 3))
            proxy.restore()
            restored = time.monotonic()

            async def first_success() -> float:
                async with httpx.AsyncClient(timeout=10) as http:
                    while True:
                        r = await http.post(f"{url}/v1/chat/completions", headers=alice.auth, json=BODY)
                        if r.status_code == 200:
                            return time.monotonic() - restored
                        await asyncio.sleep(0.05)

            back_after = asyncio.run(first_success())
            after = asyncio.run(load(url, [alice, bob], 0.5))
    refused = [a for a in during if a.request.headers["Authorization"] == alice.auth["Authorization"]]
    served = [a for a in during if a not in refused]
    assert refused and {a.status_code for a in refused} == {503}
    assert all(a.json()["error"]["code"] == "service_unavailable" and a.headers["x-should-retry"] == "true"
               for a in refused)
    assert served and {a.status_code for a in served} == {200}  # no budget, no Redis needed
    assert {a.status_code for a in after} == {200}
    assert back_after < 1.0
    lost = UsageRecord.objects.filter(tenant=alice.tenant, end_reason="gateway_unavailable")
    assert lost.count() == len(refused)
    assert not UsageRecord.objects.filter(end_reason="upstream_error").exists()
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("redis unavailable") <= 2
    money_matches(alice)
