"""The gate when Redis fails half-way, and when a request is large: in process, on the real Redis."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from billing import budgets, scripts
from billing.models import Budget, Price, UsageRecord
from proxy import limits, routing, sizing
from proxy.services import ensure_demo_route

from ..conftest import Party


@pytest.fixture(autouse=True)
def demo(db: None) -> None:
    ensure_demo_route()
    routing.invalidate()
    Price.objects.create(model="demo", input_per_million=Decimal("1000"), output_per_million=Decimal("2000"))


def chat(client: Client, party: Party, content: str = "Hello there", **body: object) -> Any:
    payload = {"model": "demo", "messages": [{"role": "user", "content": content}], **body}
    return client.post("/v1/chat/completions", json.dumps(payload), content_type="application/json", headers=party.auth)


@pytest.mark.needs_redis
def test_a_redis_timeout_after_the_hold_was_taken_gives_the_hold_and_slot_back(
    client: Client, alice: Party, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis
    import redis.exceptions

    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10"), period="month")
    alice.key.max_concurrent = 1
    alice.key.save()
    assert chat(client, alice).status_code == 200  # the period's running total exists from here on
    real_run = scripts.run

    async def run_then_time_out(url: str, calls: list[scripts.Call]) -> list[Any]:
        await real_run(url, calls)  # Redis did the work...
        raise redis.exceptions.TimeoutError("Timeout reading from socket")  # ...and the answer was lost

    monkeypatch.setattr(scripts, "run", run_then_time_out)
    response = chat(client, alice)
    monkeypatch.setattr(scripts, "run", real_run)
    assert response.status_code == 503 and response["x-should-retry"] == "true"
    assert response.json()["error"]["code"] == "service_unavailable"
    assert UsageRecord.objects.get(request_id=response["x-request-id"]).end_reason == "gateway_unavailable"
    # Redis made the hold and took the slot; both are given back (here by the upkeep's retry, once Redis answers).
    assert async_to_sync(limits.give_back_taken)() == 0
    assert budgets.status(budget).reserved_micros == 0
    assert chat(client, alice).status_code == 200  # and the key's only in-flight slot is free again


def test_the_gate_sizes_a_request_off_the_event_loop(client: Client, alice: Party, monkeypatch: pytest.MonkeyPatch) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("10"), period="month")
    seen: list[bool] = []
    real = sizing.worst_case

    def spy(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            seen.append(False)  # called on the event loop
        except RuntimeError:
            seen.append(True)  # a worker thread: no event loop runs here
        return real(*args, **kwargs)

    monkeypatch.setattr(sizing, "worst_case", spy)
    assert chat(client, alice).status_code == 200
    assert seen == [True]


def test_a_request_larger_than_the_whole_budget_is_refused_for_good(client: Client, alice: Party) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.01"), period="month")
    response = chat(client, alice, max_tokens=100, n=16)  # 1,600 completion tokens at $2,000/M: $3.20 at most
    assert response.status_code == 429 and response["x-should-retry"] == "false" and "Retry-After" not in response
    assert "more than the whole month budget" in response.json()["error"]["message"]


def test_a_request_larger_than_a_whole_token_rate_is_refused_for_good(client: Client, alice: Party) -> None:
    alice.key.tokens_per_minute = 1000
    alice.key.save()
    response = chat(client, alice, max_tokens=600, n=2)
    assert response.status_code == 429 and response["x-should-retry"] == "false" and "Retry-After" not in response
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert chat(client, alice, max_tokens=600).status_code == 200
