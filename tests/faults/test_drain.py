"""SIGTERM drains a serving process: /health/ready turns 503 at once, new requests get 503 in the API's envelope,
requests in flight get TOLLGATE_DRAIN_SECONDS to finish, and streams still running then end with an error event.
Every admitted request leaves exactly one ledger row, no hold stays open, and the process exits 0.

A real uvicorn process (tests/live.py), as the Dockerfile runs it; the mock upstream is slowed for each case.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection
from django.db.models import Sum

from bench import mock_upstream
from billing import budgets
from billing.models import Budget, Price, UsageRecord

from ..conftest import Party, make_party
from ..factories import make_route
from ..live import tollgate_process

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see the rows

MODELS = ("mock-slow", "mock-long", "mock-hang")


@pytest.fixture
def alice(transactional_db: None, mock_upstream_url: str, monkeypatch: pytest.MonkeyPatch) -> Party:
    if os.environ.get("REDIS_URL"):
        redis_client().flushdb()  # type: ignore[attr-defined]
    monkeypatch.setattr(mock_upstream, "DELAY", 0.15)  # mock-slow: 20 chunks in 3 s
    party = make_party("alice")
    for model in MODELS:
        make_route(model, upstream_model=model, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
        Price.objects.create(model=model, input_per_million=Decimal("100"), output_per_million=Decimal("200"))
    Budget.objects.create(tenant=party.tenant, amount=Decimal("100"), period="month")
    return party


def redis_client() -> object:
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


def chat(model: str, *, stream: bool) -> dict[str, Any]:
    return {"model": model, "stream": stream, "max_tokens": 500,
            "messages": [{"role": "user", "content": "Tell me a story"}]}


async def read_stream(http: httpx.AsyncClient, url: str, party: Party, model: str, first: asyncio.Event) -> list[str]:
    """The stream's data lines, in order; ``first`` is set once the first one arrived."""
    lines: list[str] = []
    async with http.stream("POST", f"{url}/v1/chat/completions", headers=party.auth,
                           json=chat(model, stream=True)) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                lines.append(line.removeprefix("data: "))
                first.set()
    return lines


async def ready_status(url: str) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(f"{url}/health/ready")).status_code


async def refused_while_draining(url: str, party: Party) -> None:
    """What a load balancer and a client see during the drain: the socket still answers, with 503s."""
    deadline = time.monotonic() + 2
    while await ready_status(url) != 503:  # the signal reaches the process within a few milliseconds
        assert time.monotonic() < deadline, "/health/ready still 200 two seconds after SIGTERM"
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{url}/health/live")).status_code == 200
        refused = await http.post(f"{url}/v1/chat/completions", headers=party.auth, json=chat("mock-slow", stream=True))
        page = await http.get(f"{url}/login/")
    assert refused.status_code == 503
    assert refused.json()["error"] == {"message": "This Tollgate process is shutting down. Retry the request.",
                                       "type": "server_error", "param": None, "code": "draining"}
    assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
    assert page.status_code == 503 and page.headers["retry-after"] == "1"


def exit_code(process: subprocess.Popen[bytes], within: float) -> int:
    try:
        return process.wait(within)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {within} s after the drain should have ended") from None


def check_ledger(party: Party, *, rows: int, end_reasons: set[str]) -> None:
    """One row per admitted request; the budget's totals equal the ledger, nothing reserved, no open hold."""
    records = UsageRecord.objects.filter(tenant=party.tenant)
    assert records.count() == rows
    assert set(records.values_list("end_reason", flat=True)) == end_reasons
    state = budgets.status(Budget.objects.get(tenant=party.tenant))
    assert state.reserved_micros == 0
    assert state.spent_picos == (records.aggregate(total=Sum("cost_picos"))["total"] or 0) > 0
    if os.environ.get("REDIS_URL"):
        assert int(redis_client().zcard("tg:holds")) == 0  # type: ignore[attr-defined]


# With --workers 2 (as the Dockerfile runs it) the SIGTERM goes to uvicorn's parent, which sends it on to each worker.
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_refuses_new_work_and_lets_requests_in_flight_finish(
    alice: Party, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(mock_upstream, "HANG", 2.0)
    env = {"TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_DRAIN_SECONDS": "30"}
    with tollgate_process(connection.settings_dict["NAME"], tmp_path / "server.log", workers=workers,
                          **env) as (url, process):

        async def scenario() -> tuple[list[str], httpx.Response, float]:
            async with httpx.AsyncClient(timeout=30) as http:
                first = asyncio.Event()
                stream = asyncio.ensure_future(read_stream(http, url, alice, "mock-slow", first))
                whole = asyncio.ensure_future(http.post(f"{url}/v1/chat/completions", headers=alice.auth,
                                                        json=chat("mock-hang", stream=False)))
                await asyncio.wait_for(first.wait(), 10)
                os.kill(process.pid, signal.SIGTERM)
                signalled = time.monotonic()
                await refused_while_draining(url, alice)
                return await stream, await whole, signalled

        lines, whole, signalled = asyncio.run(scenario())
        assert exit_code(process, 10) == 0
        took = time.monotonic() - signalled
    assert lines[-1] == "[DONE]" and len(lines) > 20  # every chunk, then a clean end
    assert whole.status_code == 200 and whole.json()["object"] == "chat.completion"
    assert took < 10  # it left once the stream ended (3 s), not after the 30 s grace period
    check_ledger(alice, rows=2, end_reasons={"complete"})  # the refused request was never admitted: no row


def test_after_the_grace_period_a_stream_ends_with_an_error_event_and_its_row(alice: Party, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mock_upstream, "HANG", 30.0)
    env = {"TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_DRAIN_SECONDS": "1"}
    with tollgate_process(connection.settings_dict["NAME"], tmp_path / "server.log", **env) as (url, process):

        async def scenario() -> tuple[list[str], httpx.Response, float]:
            async with httpx.AsyncClient(timeout=30) as http:
                first = asyncio.Event()
                stream = asyncio.ensure_future(read_stream(http, url, alice, "mock-long", first))  # 8 s long
                whole = asyncio.ensure_future(http.post(f"{url}/v1/chat/completions", headers=alice.auth,
                                                        json=chat("mock-hang", stream=False)))
                await asyncio.wait_for(first.wait(), 10)
                await asyncio.sleep(0.3)  # the non-streamed request has reached the upstream too
                os.kill(process.pid, signal.SIGTERM)
                signalled = time.monotonic()
                return await stream, await whole, signalled

        lines, whole, signalled = asyncio.run(scenario())
        assert exit_code(process, 10) == 0
        took = time.monotonic() - signalled
    assert "[DONE]" not in lines and len(lines) > 5
    assert json.loads(lines[-1])["error"]["code"] == "draining"  # in-band: the status line went out long ago
    assert whole.status_code == 503 and whole.json()["error"]["code"] == "draining"
    assert whole.headers["retry-after"] == "1"
    assert took < 1 + 5
    check_ledger(alice, rows=2, end_reasons={"drained"})
    assert set(UsageRecord.objects.values_list("status_code", flat=True)) == {503}


def test_a_second_sigterm_ends_the_grace_period_at_once(alice: Party, tmp_path: Path) -> None:
    env = {"TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_DRAIN_SECONDS": "60"}
    with tollgate_process(connection.settings_dict["NAME"], tmp_path / "server.log", **env) as (url, process):

        async def scenario() -> list[str]:
            async with httpx.AsyncClient(timeout=30) as http:
                first = asyncio.Event()
                stream = asyncio.ensure_future(read_stream(http, url, alice, "mock-long", first))  # 8 s long
                await asyncio.wait_for(first.wait(), 10)
                os.kill(process.pid, signal.SIGTERM)
                await asyncio.sleep(0.5)
                os.kill(process.pid, signal.SIGTERM)
                return await stream

        started = time.monotonic()
        lines = asyncio.run(scenario())
        assert exit_code(process, 10) == 0
        took = time.monotonic() - started
    assert json.loads(lines[-1])["error"]["code"] == "draining"
    assert took < 5  # not the 8 s the stream would take, nor the 60 s grace period
    check_ledger(alice, rows=1, end_reasons={"drained"})
