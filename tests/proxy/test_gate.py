"""The gate on /v1, in process with the built-in demo model: budgets, prices, rate limits and their denials."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest
from django.test import Client, override_settings

from accounts.models import ApiKey
from billing import budgets
from billing.models import Budget, Price, UsageRecord
from proxy import routing
from proxy.services import ensure_demo_route

from ..conftest import Party


@pytest.fixture(autouse=True)
def demo(db: None) -> None:
    ensure_demo_route()
    routing.invalidate()


@pytest.fixture
def demo_price(db: None) -> Price:
    return Price.objects.create(model="demo", input_per_million=Decimal("1000"), output_per_million=Decimal("2000"))


def chat(client: Client, party: Party, **body: object) -> object:
    payload = {"model": "demo", "messages": [{"role": "user", "content": "Hello there"}], **body}
    return client.post("/v1/chat/completions", json.dumps(payload), content_type="application/json", headers=party.auth)


def row_of(response: object) -> UsageRecord:
    return UsageRecord.objects.get(request_id=response["x-request-id"])  # type: ignore[index]


def test_an_exhausted_budget_is_429_insufficient_quota_that_the_sdk_does_not_retry(
    client: Client, alice: Party, bob: Party, demo_price: Price
) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.03"), period="month")
    UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", end_reason="complete",
                               status_code=200, cost_picos=15_000 * 10**6)  # $0.015 spent already this month
    response = chat(client, alice, max_tokens=10)  # may cost up to $0.028: fits the budget, not what is left
    assert response.status_code == 429 and response["x-should-retry"] == "false"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "month budget of this tenant ($0.03)" in error["message"] and "bob" not in error["message"]
    row = row_of(response)
    assert (row.end_reason, row.error_code, row.status_code, row.cost_picos) == ("rejected", "insufficient_quota", 429, 0)
    [check] = row.gate["budgets"]
    assert (check["limit_micros"], check["spent_micros"], check["reserved_micros"]) == (30_000, 15_000, 0)
    assert chat(client, bob, max_tokens=10_000).status_code == 200  # alice's budget is alice's alone


def test_an_admitted_request_is_charged_its_actual_cost_and_releases_the_rest(
    client: Client, alice: Party, demo_price: Price
) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, key=alice.key, amount=Decimal("1.00"), period="day")
    response = chat(client, alice, max_tokens=200)
    assert response.status_code == 200
    row = row_of(response)
    expected = row.prompt_tokens * 1000 + row.completion_tokens * 2000
    assert row.cost_picos == expected * 10**6 > 0 and row.price_id == demo_price.pk and not row.unpriced
    state = budgets.status(budget)
    assert (state.spent_micros, state.reserved_micros) == (expected, 0)
    # The header was computed while the worst case was still held.
    assert Decimal(response["x-tollgate-budget-remaining-usd"]) < Decimal("1.00") - Decimal(expected) / 1_000_000
    assert row.gate["held_micros"] >= expected


def test_requests_per_minute_is_429_with_retry_after_and_remaining_headers(client: Client, alice: Party) -> None:
    ApiKey.objects.filter(pk=alice.key.pk).update(requests_per_minute=2)
    first, second, third = (chat(client, alice) for _ in range(3))
    assert (first["x-ratelimit-limit-requests"], first["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert second["x-ratelimit-remaining-requests"] == "0"
    assert third.status_code == 429 and 1 <= int(third["Retry-After"]) <= 60
    error = third.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert "2 requests per minute" in error["message"] and "key" in error["message"]
    row = row_of(third)
    assert (row.end_reason, row.error_code, row.gate["rate"]) == (
        "rejected", "rate_limit_exceeded", {"scope": "key", "limit": "requests", "value": 2})


def test_tokens_per_minute_counts_the_prompt_and_the_completion_asked_for(client: Client, alice: Party) -> None:
    alice.tenant.tokens_per_minute = 1000
    alice.tenant.save()
    assert chat(client, alice, max_tokens=500).status_code == 200
    refused = chat(client, alice, max_tokens=600)
    assert refused.status_code == 429 and "1000 tokens per minute" in refused.json()["error"]["message"]
    assert "tenant" in refused.json()["error"]["message"]


def test_an_unpriced_model_is_flagged_and_denied_only_when_configured(client: Client, alice: Party) -> None:
    response = chat(client, alice)
    row = row_of(response)
    assert response.status_code == 200 and row.unpriced and row.cost_picos == 0 and row.price_id is None
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("5"))
    with override_settings(TOLLGATE_UNPRICED="deny"):
        denied = chat(client, alice)
    assert denied.status_code == 429 and "no price" in denied.json()["error"]["message"]


def test_a_rate_limited_request_holds_no_money_even_when_asked_together_with_the_budget(
    client: Client, alice: Party, demo_price: Price
) -> None:
    # With Redis the limit check and the budget hold go in one round trip; a refused request gives the hold back.
    ApiKey.objects.filter(pk=alice.key.pk).update(requests_per_minute=1, max_concurrent=5)
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="day")
    first, second = chat(client, alice, max_tokens=50), chat(client, alice, max_tokens=50)
    assert (first.status_code, second.status_code) == (200, 429)
    assert second.json()["error"]["code"] == "rate_limit_exceeded" and "budgets" not in row_of(second).gate
    state = budgets.status(budget)
    assert (state.spent_micros, state.reserved_micros) == (row_of(first).cost_picos // 10**6, 0)


@pytest.mark.django_db(transaction=True)
def test_a_client_leaving_while_the_gate_answers_leaves_nothing_held(alice: Party, demo_price: Price) -> None:
    from asgiref.sync import async_to_sync

    from accounts.keys import lookup
    from billing import pricing
    from proxy import limits
    from proxy.limits import check_limits
    from proxy.metering import Meter
    from proxy.providers.base import ApiRequest

    ApiKey.objects.filter(pk=alice.key.pk).update(max_concurrent=1)
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="day")
    caller = lookup(alice.secret)
    targets = async_to_sync(routing.route)(caller, "demo")

    async def leave_while_asking() -> None:
        await limits.budget_table(), await pricing.table()  # loaded now, so the gate's first wait is its question
        meter = Meter("chat")
        meter.caller = caller
        meter.body = ApiRequest(endpoint="chat", model="demo", max_tokens=9,
                                data={"model": "demo", "messages": [{"role": "user", "content": "Hi"}]})
        asking = asyncio.ensure_future(check_limits(meter, targets))
        await asyncio.sleep(0)
        assert not asking.done()
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        await asyncio.sleep(0.5)  # the answer arrives and is given back

    async_to_sync(leave_while_asking)()
    state = budgets.status(budget)
    assert (state.spent_micros, state.reserved_micros) == (0, 0)
    client = Client()
    assert chat(client, alice, max_tokens=9).status_code == 200  # the single in-flight slot is free again


def test_when_the_budgets_cannot_be_asked_the_rate_limit_slot_goes_back(
    client: Client, alice: Party, demo_price: Price, monkeypatch: pytest.MonkeyPatch
) -> None:
    from billing import holds

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("budget store unavailable")

    ApiKey.objects.filter(pk=alice.key.pk).update(max_concurrent=1)
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="day")
    with monkeypatch.context() as patched:
        patched.setattr(holds.RedisBackend, "complete", broken)
        patched.setattr(holds.DatabaseBackend, "reserve", broken)
        failed = chat(client, alice, max_tokens=9)
    assert failed.status_code == 500 and "budget store" not in failed.content.decode()
    assert chat(client, alice, max_tokens=9).status_code == 200  # the one in-flight slot was given back


@pytest.mark.django_db(transaction=True)
def test_a_request_that_holds_nothing_still_settles_on_a_hard_budget(alice: Party) -> None:
    from asgiref.sync import async_to_sync

    from accounts.keys import lookup
    from billing import holds
    from proxy.errors import BudgetExceeded
    from proxy.limits import check_limits
    from proxy.metering import Meter
    from proxy.providers.base import ApiRequest

    # The demo model has no price: the gate holds 0. Such requests used to leave no hold, so whatever they cost
    # (a price added later, a per-request fee) never reached the budget and a hard budget kept admitting.
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.01"), period="day")
    caller = lookup(alice.secret)
    targets = async_to_sync(routing.route)(caller, "demo")

    async def ask() -> Meter:
        meter = Meter("chat")
        meter.caller = caller
        meter.body = ApiRequest(endpoint="chat", model="demo", max_tokens=9,
                                data={"model": "demo", "messages": [{"role": "user", "content": "Hi"}]})
        await check_limits(meter, targets)
        return meter

    admitted = 0
    for _ in range(5):
        try:
            meter = async_to_sync(ask)()
        except BudgetExceeded:
            break
        assert meter.hold is not None and meter.hold.keys and meter.gate["held_micros"] == 0
        async_to_sync(holds.backend().settle)(meter.hold, 6_000 * 10**6)  # $0.006 each
        admitted += 1
    assert admitted == 2  # $0.006 fits, $0.012 is past $0.01: refused from then on
    assert budgets.status(budget).spent_micros == 12_000


def check(limit: int, spent: int, held: int = 0, scope_key: int | None = None) -> object:
    from datetime import UTC, datetime

    from billing.budgets import BudgetSpec, Check

    spec = BudgetSpec(id=1, name="b", tenant_id=1, key_id=scope_key, limit_micros=limit, period="month", hard=True,
                      zone="UTC")
    return Check(spec, datetime(2026, 11, 1, tzinfo=UTC), spent, held)


def test_a_refusal_before_anything_was_spent_says_the_request_would_exceed_the_budget() -> None:
    from proxy.limits import refusal

    assert refusal(check(30_000, 0, held=20_000), 40_000) == (
        "This request would exceed the month budget of this tenant ($0.03): $0.01 remains ($0.02 more is held by "
        "requests in flight) and this request may cost up to $0.04 (its prompt and max_tokens at the model's price). "
        "Send a shorter prompt or a lower max_tokens.")
    assert "You exceeded" not in refusal(check(10_000, 0), 40_000)


def test_a_refusal_near_zero_shows_micro_dollars_not_zero_cents() -> None:
    from proxy.limits import refusal

    message = refusal(check(10_000, 9_996, scope_key=7), 11)
    assert "month budget of this key ($0.01): $0.000004 remains" in message
    assert "may cost up to $0.000011" in message and "$0.00 " not in message


def test_a_used_up_budget_says_it_was_reached_with_what_is_spent_and_held() -> None:
    from proxy.limits import refusal

    assert refusal(check(10_000, 10_250), 5).startswith(
        "You reached the month budget of this tenant ($0.01): $0.01025 is spent. Requests are refused")
    assert "$0.0075 is spent ($0.0025 more is held by requests in flight)" in refusal(check(10_000, 7_500, held=2_500), 5)


def test_the_refusal_over_v1_names_what_remains_to_the_micro_dollar(client: Client, alice: Party) -> None:
    Price.objects.create(model="demo", input_per_million=Decimal("1"), output_per_million=Decimal("1"))
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.01"), period="month")
    UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", end_reason="complete",
                               status_code=200, cost_picos=9_996 * 10**6)
    response = chat(client, alice, max_tokens=5)
    message = response.json()["error"]["message"]
    assert response.status_code == 429 and "would exceed the month budget of this tenant ($0.01)" in message
    assert "$0.000004 remains" in message and "may cost up to $0.0000" in message
    assert row_of(response).gate["denied_by"] == budget.pk


def test_budget_amounts_take_micro_dollars(client: Client, alice: Party, demo_price: Price) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.000150"), period="day")
    assert budget.amount_micros == 150 and budgets.spec_of(Budget.objects.get(pk=budget.pk)).limit_micros == 150
    refused = chat(client, alice, max_tokens=1)  # costs more than $0.00015 at the demo price: never fits
    assert refused.status_code == 429 and "($0.00015)" in refused.json()["error"]["message"]
