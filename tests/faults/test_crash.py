"""A serving process killed or stopped mid-stream: every admitted request still leaves exactly one ledger row,
the budget totals equal the ledger, and holds and in-flight slots heal on their own.

Two real uvicorn processes share Redis, PostgreSQL and a journal directory. Twenty long streams run on the
first; it is killed with SIGKILL (or stopped with SIGTERM) while they are mid-way. The second process replays
the dead one's journal (its upkeep looks every quarter lease; the lease is 8 s here).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.db import connection
from django.db.models import Sum

from billing import budgets, keyspace
from billing.models import Budget, Price, UsageRecord

from ..conftest import Party, make_party
from ..factories import make_route
from ..live import tollgate_process, tollgate_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.needs_postgres, pytest.mark.needs_redis]

STREAMS = 20
LEASE = 8


def redis_client() -> object:
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


@pytest.fixture
def alice(transactional_db: None, mock_upstream_url: str) -> Party:
    redis_client().flushdb()  # type: ignore[attr-defined]
    party = make_party("alice")
    make_route("mock-long", upstream_model="mock-long", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    for model in ("mock-long", "mock"):
        Price.objects.create(model=model, input_per_million=Decimal("100"), output_per_million=Decimal("200"))
    Budget.objects.create(tenant=party.tenant, amount=Decimal("100"), period="month")
    party.key.max_concurrent = STREAMS
    party.key.save()
    return party


async def open_streams(url: str, secret: str, count: int) -> tuple[list[asyncio.Task[int]], httpx.AsyncClient]:
    """Start ``count`` long streams and wait until each has relayed a few chunks; returns the reading tasks."""
    http = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100))
    started = asyncio.Event()
    seen = [0]

    async def read() -> int:
        chunks = 0
        try:
            async with http.stream("POST", f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                                   json={"model": "mock-long", "stream": True, "max_tokens": 500,
                                         "messages": [{"role": "user", "content": "Tell me a long story"}]}) as r:
                assert r.status_code == 200, await r.aread()
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        chunks += 1
                        if chunks == 5:
                            seen[0] += 1
                            if seen[0] == count:
                                started.set()
        except (httpx.HTTPError, AssertionError):
            pass
        return chunks

    tasks = [asyncio.ensure_future(read()) for _ in range(count)]
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(1.5)  # past a journal checkpoint: what was relayed is on disk
    return tasks, http


def wait_for(condition: object, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


def check_money(party: Party) -> None:
    """Budget totals equal the ledger to the pico-dollar; nothing reserved, no open hold, no slot taken."""
    budget = Budget.objects.get(tenant=party.tenant)
    ledger = UsageRecord.objects.filter(tenant=party.tenant).aggregate(total=Sum("cost_picos"))["total"] or 0
    client = redis_client()

    def healed() -> bool:
        state = budgets.status(budget)
        return state.reserved_micros == 0 and int(client.zcard(keyspace.leases(party.tenant.pk))) == 0  # type: ignore[attr-defined]

    wait_for(healed, 2 * LEASE)
    state = budgets.status(budget)
    assert state.spent_picos == ledger
    assert int(client.zcard(keyspace.rate(party.tenant.pk, "key", party.key.prefix) + ":c")) == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_killed_worker_leaves_every_row_and_heals(alice: Party, tmp_path: Path, how: signal.Signals) -> None:
    name = connection.settings_dict["NAME"]
    env = {"TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_RESERVATION_LEASE_SECONDS": str(LEASE)}
    with tollgate_server(name, tmp_path / "survivor.log", **env) as survivor:
        with tollgate_process(name, tmp_path / "victim.log", **env) as (victim, process):

            async def scenario() -> list[int]:
                tasks, http = await open_streams(victim, alice.secret, STREAMS)
                os.kill(process.pid, how)
                if how == signal.SIGKILL:
                    process.wait(10)
                chunks = await asyncio.gather(*tasks)
                await http.aclose()
                return chunks

            chunks = asyncio.run(scenario())
            process.wait(30)
        assert all(c >= 5 for c in chunks)
        rows = UsageRecord.objects.filter(tenant=alice.tenant)
        # The survivor's upkeep replays the journal of the dead process.
        httpx.get(f"{survivor}/v1/models", headers=alice.auth, timeout=10)
        took = wait_for(lambda: rows.count() >= STREAMS, 30)
        assert rows.count() == STREAMS
        assert took < 30
        if how == signal.SIGKILL:
            assert set(rows.values_list("end_reason", flat=True)) == {"gateway_lost"}
            # Billed: the prompt counted at admission, plus what was relayed up to the last checkpoint.
            assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 and r.cost_picos > 0 for r in rows)
        else:
            # Stopped gracefully: uvicorn lets the streams end, so each is a complete row.
            assert set(rows.values_list("end_reason", flat=True)) <= {"complete", "client_gone"}
        check_money(alice)
        # The key's 20 in-flight slots are free again: 20 requests at once are all admitted.
        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as http:
                answers = await asyncio.gather(*[
                    http.post(f"{survivor}/v1/chat/completions", headers=alice.auth,
                              json={"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
                    for _ in range(STREAMS)])
            return [a.status_code for a in answers]

        assert asyncio.run(burst()) == [200] * STREAMS
        wait_for(lambda: rows.all().count() >= 2 * STREAMS, 10)
        assert rows.all().count() == 2 * STREAMS
        check_money(alice)
    # Both processes are gone: nothing is left open, so no journal file is left either.
    assert list((tmp_path / "journal").glob("*.journal")) == []
