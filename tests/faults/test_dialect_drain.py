"""SIGTERM on a process serving the Messages and Responses APIs: a new request is refused 503 in the endpoint's own
envelope (Anthropic's on /v1/messages*, OpenAI's on /v1/responses*); requests still running when the grace period
ends are cut in the dialect's shape (a stream's in-band error event, a whole answer's 503); each leaves one `drained`
row and the budget's totals equal the ledger.
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

from bench import mock_upstream
from billing import budgets
from billing.models import Budget, Price, UsageRecord

from ..conftest import Party, make_party
from ..dialects.dialect_checks import (
    COUNT_TOKENS, MESSAGES, RESPONSES, URLS, assert_error, assert_failed_stream, body_for,
)
from ..factories import make_route
from ..live import tollgate_process

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see the rows


@pytest.fixture
def alice(transactional_db: None, mock_upstream_url: str, monkeypatch: pytest.MonkeyPatch) -> Party:
    if os.environ.get("REDIS_URL"):
        import redis

        redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    monkeypatch.setattr(mock_upstream, "HANG", 30.0)
    party = make_party("alice")
    for model in ("mock-long", "mock-hang"):
        make_route(model, upstream_model=model, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
        Price.objects.create(model=model, input_per_million=Decimal("100"), output_per_million=Decimal("200"))
    Budget.objects.create(tenant=party.tenant, amount=Decimal("100"), period="month")
    return party


async def refused(url: str, party: Party) -> dict[str, httpx.Response]:
    """New requests once the process is draining (its readiness probe says so)."""
    async with httpx.AsyncClient(timeout=10) as http:
        deadline = time.monotonic() + 2
        while (await http.get(f"{url}/health/ready")).status_code != 503:
            assert time.monotonic() < deadline, "/health/ready still 200 two seconds after SIGTERM"
            await asyncio.sleep(0.02)
        answers = {path: await http.post(f"{url}{path}", headers=party.auth, json=body_for(
            MESSAGES if path == URLS[MESSAGES] else RESPONSES, "mock-long"))
            for path in (URLS[MESSAGES], URLS[RESPONSES])}
        answers[COUNT_TOKENS] = await http.post(f"{url}{COUNT_TOKENS}", headers=party.auth, json={
            "model": "mock-long", "messages": [{"role": "user", "content": "hi"}]})
    return answers


def test_a_draining_process_refuses_new_dialect_requests_in_their_own_envelope(alice: Party, tmp_path: Path) -> None:
    env = {"TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_DRAIN_SECONDS": "30"}
    with tollgate_process(connection.settings_dict["NAME"], tmp_path / "server.log", **env) as (url, process):

        async def scenario() -> dict[str, httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as http:
                # A stream in flight keeps the process draining while the new requests arrive.
                async with http.stream("POST", f"{url}{URLS[MESSAGES]}", headers=alice.auth,
                                       json=body_for(MESSAGES, "mock-long", stream=True, tokens=1000)) as r:
                    assert r.status_code == 200
                    lines = r.aiter_lines()
                    await anext(lines)
                    os.kill(process.pid, signal.SIGTERM)
                    answers = await refused(url, alice)
                    os.kill(process.pid, signal.SIGTERM)  # a second one ends the grace at once
                    async for _ in lines:
                        pass
                return answers

        answers = asyncio.run(scenario())
        process.wait(15)
    for path, answer in answers.items():
        endpoint = RESPONSES if path == URLS[RESPONSES] else MESSAGES
        error = assert_error(endpoint, answer.status_code, answer.headers, answer.content, 503)
        assert answer.headers["retry-after"] == "1"
        if endpoint == RESPONSES:
            assert error["code"] == "draining"
    assert UsageRecord.objects.count() == 1  # the stream's; the refused requests were never admitted


def test_after_the_grace_period_dialect_requests_end_in_their_own_shape_with_their_rows(
    alice: Party, tmp_path: Path
) -> None:
    env = {"TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"), "TOLLGATE_DRAIN_SECONDS": "1"}
    with tollgate_process(connection.settings_dict["NAME"], tmp_path / "server.log", **env) as (url, process):

        async def scenario() -> tuple[list[bytes], list[httpx.Response]]:
            async with httpx.AsyncClient(timeout=30) as http:
                started = [asyncio.Event() for _ in range(2)]

                async def read(endpoint: str, first: asyncio.Event) -> bytes:
                    content = b""
                    async with http.stream("POST", f"{url}{URLS[endpoint]}", headers=alice.auth,
                                           json=body_for(endpoint, "mock-long", stream=True, tokens=1000)) as r:
                        assert r.status_code == 200
                        async for chunk in r.aiter_bytes():
                            content += chunk
                            first.set()
                    return content

                streams = [asyncio.ensure_future(read(e, f)) for e, f in zip((MESSAGES, RESPONSES), started)]
                whole = [asyncio.ensure_future(http.post(f"{url}{URLS[e]}", headers=alice.auth,
                                                         json=body_for(e, "mock-hang"))) for e in (MESSAGES, RESPONSES)]
                await asyncio.wait_for(asyncio.gather(*(f.wait() for f in started)), 10)
                await asyncio.sleep(0.3)  # the whole requests have reached the upstream too
                os.kill(process.pid, signal.SIGTERM)
                return list(await asyncio.gather(*streams)), list(await asyncio.gather(*whole))

        streamed, whole = asyncio.run(scenario())
        assert process.wait(10) == 0
    for endpoint, content in zip((MESSAGES, RESPONSES), streamed):
        assert_failed_stream(endpoint, content)
    for endpoint, answer in zip((MESSAGES, RESPONSES), whole):
        error = assert_error(endpoint, answer.status_code, answer.headers, answer.content, 503)
        if endpoint == RESPONSES:
            assert error["code"] == "draining"
    rows = UsageRecord.objects.filter(tenant=alice.tenant)
    assert rows.count() == 4
    assert sorted(rows.values_list("endpoint", "end_reason", "status_code")) == sorted(
        (e, "drained", 503) for e in (MESSAGES, RESPONSES, MESSAGES, RESPONSES))
    state = budgets.status(Budget.objects.get(tenant=alice.tenant))
    assert state.reserved_micros == 0
    assert state.spent_picos == rows.aggregate(total=Sum("cost_picos"))["total"] > 0
