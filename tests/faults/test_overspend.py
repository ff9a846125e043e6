"""The overspend bound: 200 concurrent requests of every shape the gate sizes, over two server processes sharing
Redis, against a small hard budget. The ledger never passes the budget by more than one request's estimate error
(here none: the mock provider never uses more than the worst case held), and the budget's total equals the ledger.
"""

from __future__ import annotations

import asyncio
import os
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.db import connection
from django.db.models import Sum

from billing import budgets
from billing.models import Budget, Price, UsageRecord

from ..conftest import Party, make_party
from ..factories import make_route
from ..live import tollgate_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.needs_postgres, pytest.mark.needs_redis]

TOOLS = [{"type": "function", "function": {"name": f"tool_{i}", "description": "Looks a thing up. " * 20,
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
         for i in range(20)]
SHAPES = [
    ("chat/completions", {"model": "mock", "max_tokens": 5, "n": 2, "tools": TOOLS,
                          "messages": [{"role": "user", "content": "Count to three please"}]}),
    ("chat/completions", {"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}]}]}),
    ("chat/completions", {"model": "mock", "max_tokens": 5, "response_format": {
        "type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}},
        "messages": [{"role": "user", "content": "Count to three please"},
                     {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                      "function": {"name": "tool_1", "arguments": "{\"q\": \"three\"}"}}]},
                     {"role": "tool", "tool_call_id": "c1", "content": "one two three"}]}),
    ("embeddings", {"model": "mock", "input": [[1, 2, 3], [4, 5, 6]]}),
    ("completions", {"model": "mock", "max_tokens": 5, "prompt": "Count to three please"}),
]


@pytest.fixture
def alice(transactional_db: None, mock_upstream_url: str) -> Party:
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    party = make_party("alice")
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    Price.objects.create(model="mock", input_per_million=Decimal("100"), output_per_million=Decimal("200"))
    return party


def test_200_concurrent_requests_of_every_shape_over_two_processes_never_pass_a_hard_budget(
    alice: Party, tmp_path: Path
) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.05"), period="day")
    name = connection.settings_dict["NAME"]
    with tollgate_server(name, tmp_path / "one.log") as one, tollgate_server(name, tmp_path / "two.log") as two:

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
            async with httpx.AsyncClient(timeout=30, limits=limits) as http:
                return await asyncio.gather(*[
                    http.post(f"{(one, two)[i % 2]}/v1/{SHAPES[i % len(SHAPES)][0]}", headers=alice.auth,
                              json=SHAPES[i % len(SHAPES)][1])
                    for i in range(200)])

        answers = asyncio.run(burst())
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 429}, [a.text for a in answers if a.status_code not in (200, 429)][:3]
    refused = [a for a in answers if a.status_code == 429]
    assert refused and all(a.json()["error"]["code"] == "insufficient_quota" and a.headers["x-should-retry"] == "false"
                           for a in refused)
    assert UsageRecord.objects.filter(tenant=alice.tenant).count() == 200
    spent = UsageRecord.objects.filter(tenant=alice.tenant).aggregate(total=Sum("cost_picos"))["total"]
    assert 0 < spent <= budget.amount_micros * 10**6  # never past the budget
    deadline = time.monotonic() + 5  # each hold settles just after its row is written
    while budgets.status(budget).reserved_micros and time.monotonic() < deadline:
        time.sleep(0.05)
    state = budgets.status(budget)
    assert (state.spent_picos, state.reserved_micros) == (spent, 0)
