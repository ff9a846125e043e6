"""GET /v1/usage: the calling key's usage equals the ledger, by UTC day and month, with its budgets' spent, held and
left; bad input is a 400 in OpenAI's envelope; bob's key never sees alice's usage."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db.models import Count, Q, Sum
from django.test import Client
from django.utils import timezone

from billing import budgets, holds, rollups
from accounts.models import Project
from accounts.projects import set_key_project
from billing.models import Budget, Price, RollupState, UsageRecord
from proxy import routing

from ..conftest import Party, make_party
from ..factories import make_key, make_route

pytestmark = pytest.mark.django_db


def usage(client: Client, party: Party | str, **query: str) -> Any:
    auth = party.auth if isinstance(party, Party) else {"Authorization": f"Bearer {party}"}
    return client.get("/v1/usage", query, headers=auth)


def record(party: Party, at: datetime, *, cost: int = 0, prompt: int = 0, completion: int = 0,
           end_reason: str = "complete", key: Any = None) -> UsageRecord:
    return UsageRecord.objects.create(
        tenant=party.tenant, key=key or party.key, endpoint="chat", public_model="gpt-4o", provider="openai",
        prompt_tokens=prompt, completion_tokens=completion, cost_picos=cost, end_reason=end_reason,
        status_code=429 if end_reason == "rejected" else 200, created_at=at)


def ledger(key_id: int, start: datetime, end: datetime) -> dict[str, int]:
    rows = UsageRecord.objects.filter(key_id=key_id, created_at__gte=start, created_at__lt=end)
    sums = rows.aggregate(requests=Count("id"), refusals=Count("id", filter=Q(end_reason="rejected")),
                          prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"),
                          cost_picos=Sum("cost_picos"))
    return {name: int(value or 0) for name, value in sums.items()}


def figures(body: dict[str, Any]) -> dict[str, int]:
    return {name: body[name] for name in ("requests", "refusals", "prompt_tokens", "completion_tokens", "cost_picos")}


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def test_real_requests_add_up_to_the_ledger_exactly(client: Client, alice: Party, demo: object) -> None:
    Price.objects.create(model="demo", effective_from=date(2020, 1, 1), input_per_million=Decimal("0.150001"),
                         output_per_million=Decimal("0.600003"))
    routing.invalidate()
    chat = {"model": "demo", "messages": [{"role": "user", "content": "Count to five, please"}]}
    for _ in range(3):
        sent = client.post("/v1/chat/completions", json.dumps(chat), content_type="application/json", headers=alice.auth)
        assert sent.status_code == 200
    refused = client.post("/v1/chat/completions", json.dumps({**chat, "max_tokens": -1}),
                          content_type="application/json", headers=alice.auth)
    assert refused.status_code == 400

    answer = usage(client, alice)
    assert answer.status_code == 200
    body = answer.json()
    today = timezone.now().astimezone(UTC).date()
    expected = ledger(alice.key.pk, midnight(today), midnight(today) + timedelta(days=1))
    assert expected["requests"] == 4 and expected["refusals"] == 1 and expected["cost_picos"] > 0
    assert figures(body) == expected
    assert body["total_tokens"] == expected["prompt_tokens"] + expected["completion_tokens"]
    assert body["cost_usd"] == str((Decimal(expected["cost_picos"]) / 10**12).quantize(Decimal("1E-12")))
    assert (body["object"], body["period"], body["start"], body["end"]) == ("usage", "today", str(today), str(today))
    assert body["key"] == {"id": alice.key.pk, "prefix": alice.key.prefix, "tenant": "alice"}
    assert alice.secret not in answer.content.decode()
    assert [day["date"] for day in body["daily"]] == [str(today)] and figures(body["daily"][0]) == expected


def test_today_and_the_month_end_at_utc_midnights(client: Client, alice: Party) -> None:
    now = timezone.now().astimezone(UTC)
    today = midnight(now.date())
    first_of_month = midnight(now.date().replace(day=1))
    tick = timedelta(microseconds=1)
    record(alice, today, cost=1, prompt=1)                                   # today's first instant
    record(alice, today - tick, cost=10, prompt=10)                          # yesterday's last
    record(alice, first_of_month, cost=100, prompt=100)                      # this month's first instant
    record(alice, first_of_month - tick, cost=1000, prompt=1000)             # last month's last
    record(alice, now + timedelta(days=40), cost=10_000)                     # a clock ahead: not this month

    assert usage(client, alice).json()["cost_picos"] == ledger(alice.key.pk, today, today + timedelta(days=1))["cost_picos"]
    month = usage(client, alice, period="month").json()
    assert figures(month) == ledger(alice.key.pk, first_of_month, today + timedelta(days=1))
    assert (month["period"], month["start"], month["end"]) == ("month", str(first_of_month.date()), str(now.date()))
    # A range names whole UTC days, both included.
    yesterday = (today - timedelta(days=1)).date()
    one_day = usage(client, alice, start=str(yesterday), end=str(yesterday)).json()
    assert figures(one_day) == ledger(alice.key.pk, today - timedelta(days=1), today)
    two_days = usage(client, alice, start=str(yesterday), end=str(now.date())).json()
    assert two_days["period"] == "range" and [d["date"] for d in two_days["daily"]] == [str(yesterday), str(now.date())]
    assert figures(two_days) == ledger(alice.key.pk, today - timedelta(days=1), today + timedelta(days=1))
    since = usage(client, alice, start=str(yesterday)).json()  # end defaults to today
    assert since["end"] == str(now.date()) and figures(since) == figures(two_days)


def test_month_spans_a_year_end(client: Client, alice: Party) -> None:
    new_year = datetime(2027, 1, 1, tzinfo=UTC)
    record(alice, new_year - timedelta(microseconds=1), cost=7)
    record(alice, new_year, cost=5)
    december = usage(client, alice, start="2026-12-01", end="2026-12-31").json()
    assert december["cost_picos"] == 7 and december["requests"] == 1
    assert usage(client, alice, start="2026-12-31", end="2027-01-01").json()["cost_picos"] == 12


def test_pruned_days_come_from_the_day_rollups_and_match_the_ledger_they_replaced(client: Client, alice: Party) -> None:
    now = timezone.now().astimezone(UTC)
    today = midnight(now.date())
    for days_back, cost in ((80, 3), (79, 5), (70, 7), (1, 11), (0, 13)):
        record(alice, today - timedelta(days=days_back) + timedelta(hours=5), cost=cost, prompt=cost, completion=1)
    record(alice, today - timedelta(days=79), end_reason="rejected")
    start, end = (today - timedelta(days=85)).date(), now.date()
    before = usage(client, alice, start=str(start), end=str(end)).json()
    assert before["rolled_up_before"] is None
    assert figures(before) == ledger(alice.key.pk, today - timedelta(days=85), now + timedelta(days=1))
    rollups.roll_up()
    # Rows within ID_OVERLAP of the watermark may still be re-read; as if more rows had been rolled up since:
    RollupState.objects.update(last_record_id=UsageRecord.objects.order_by("-id")[0].pk + rollups.ID_OVERLAP)
    assert rollups.prune(retention_days=75).deleted == 3
    after = usage(client, alice, start=str(start), end=str(end)).json()
    pruned = RollupState.objects.get().pruned_before
    assert after["rolled_up_before"] == str(pruned.date())
    assert figures(after) == figures(before) and after["daily"] == before["daily"]


def test_budgets_show_spent_held_and_left_of_this_period(client: Client, alice: Party, bob: Party) -> None:
    now = timezone.now()
    record(alice, now, cost=250_000_000_123)  # $0.250000000123
    tenant_budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="month")
    key_budget = Budget.objects.create(tenant=alice.tenant, key=alice.key, amount=Decimal("0.50"), period="day",
                                       set_by=Budget.SetBy.TENANT)
    other_key, other_secret = make_key(alice.tenant, name="other")
    Budget.objects.create(tenant=alice.tenant, key=other_key, amount=Decimal("9"))      # another key's: not listed
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("9"), is_active=False)   # inactive: not listed
    Budget.objects.create(tenant=bob.tenant, amount=Decimal("9"))                      # bob's: not listed
    specs = tuple(budgets.spec_of(Budget.objects.select_related("tenant").get(pk=b.pk)) for b in (tenant_budget, key_budget))
    assert async_to_sync(holds.backend().reserve)("held-1", specs, 60_000, now).admitted

    listed = {b["id"]: b for b in usage(client, alice).json()["budgets"]}
    assert set(listed) == {tenant_budget.pk, key_budget.pk}
    month, day = listed[tenant_budget.pk], listed[key_budget.pk]
    assert (month["scope"], month["period"], month["hard"]) == ("tenant", "month", True)
    assert (day["scope"], day["period"]) == ("key", "day")
    for shown, limit in ((month, 1_000_000), (day, 500_000)):
        assert shown["spent_picos"] == 250_000_000_123 and shown["spent_usd"] == "0.250000000123"
        assert shown["held_micros"] == 60_000 and shown["held_usd"] == "0.060000"
        assert shown["limit_micros"] == limit
        # A started micro-dollar counts whole, as the gate counts it: 250,001 spent.
        assert shown["left_micros"] == limit - 250_001 - 60_000
        assert Decimal(shown["left_usd"]) * 10**6 == shown["left_micros"]
    assert month["period_start"] == budgets.period_bounds("month", "UTC", now)[0].isoformat()
    others = [b["id"] for b in usage(client, other_secret).json()["budgets"]]
    assert others == [tenant_budget.pk, Budget.objects.get(key=other_key).pk]


def test_budgets_of_other_projects_are_not_listed_and_narrowed_ones_say_what_they_cover(
        client: Client, alice: Party) -> None:
    search = Project.objects.create(tenant=alice.tenant, name="Search", slug="search")
    ads = Project.objects.create(tenant=alice.tenant, name="Ads", slug="ads")
    set_key_project(key=alice.key, project=search)
    tenant_wide = Budget.objects.create(tenant=alice.tenant, amount=Decimal("9"))
    own_project = Budget.objects.create(tenant=alice.tenant, project=search, amount=Decimal("5"))
    Budget.objects.create(tenant=alice.tenant, project=ads, amount=Decimal("5"))  # another project's: not listed
    by_model = Budget.objects.create(tenant=alice.tenant, model="gpt-4o*", amount=Decimal("2"))
    by_tag = Budget.objects.create(tenant=alice.tenant, project=search, tag="team:x", amount=Decimal("1"), period="day")

    listed = {b["id"]: b for b in usage(client, alice).json()["budgets"]}
    assert set(listed) == {tenant_wide.pk, own_project.pk, by_model.pk, by_tag.pk}
    assert listed[tenant_wide.pk]["applies_to"] == "tenant alice"
    assert listed[own_project.pk]["applies_to"] == "project search"
    assert listed[by_model.pk]["applies_to"] == "model gpt-4o*"
    assert listed[by_tag.pk]["applies_to"] == "project search, tag team:x"
    assert {b["scope"] for b in listed.values()} == {"tenant"}


def test_bobs_key_never_sees_alices_usage(client: Client, alice: Party, bob: Party) -> None:
    now = timezone.now()
    record(alice, now, cost=999, prompt=9, completion=9)
    record(alice, now, end_reason="rejected")
    other_key, other_secret = make_key(alice.tenant, name="second")
    record(alice, now, cost=5, key=other_key)
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"))
    bobs = usage(client, bob, period="month").json()
    assert figures(bobs) == {"requests": 0, "refusals": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_picos": 0}
    assert bobs["budgets"] == [] and bobs["daily"] == [] and bobs["key"]["tenant"] == "bob"
    # Even a key of alice's own tenant sees only its own requests.
    assert usage(client, other_secret).json()["cost_picos"] == 5
    assert usage(client, alice).json()["cost_picos"] == 999


@pytest.mark.parametrize("query, param", [
    ({"start": "2026-13-01"}, "start"),
    ({"start": "2026-02-30"}, "start"),
    ({"start": "yesterday"}, "start"),
    ({"start": "2026-11-01T00:00:00"}, "start"),
    ({"start": "2026-11-01", "end": "1 Nov"}, "end"),
    ({"start": "2026-11-02", "end": "2026-11-01"}, "end"),
    ({"start": "2026-01-01", "end": "2026-12-31"}, "end"),
    ({"start": "0001-01-01", "end": "9999-12-31"}, "end"),
    ({"end": "2026-11-01"}, "start"),
    ({"start": "9999-01-01"}, "start"),
    ({"period": "week"}, "period"),
    ({"period": "month", "start": "2026-11-01"}, "period"),
    ({"start": "2026-11-01\x00"}, "start"),
])
def test_bad_dates_are_a_400_in_openais_envelope(client: Client, alice: Party, query: dict[str, str], param: str) -> None:
    answer = usage(client, alice, **query)
    assert answer.status_code == 400, answer.content
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param) and error["message"]


def test_a_range_of_the_maximum_length_is_answered(client: Client, alice: Party) -> None:
    assert usage(client, alice, start="2026-01-01", end="2026-04-02").status_code == 200  # 92 days
    assert usage(client, alice, start="2026-01-01", end="2026-04-03").status_code == 400


def test_a_key_is_required_and_only_get_is_served(client: Client, alice: Party) -> None:
    anonymous = client.get("/v1/usage")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
    assert usage(client, "tg-000000000000-" + "x" * 40).status_code == 401
    posted = client.post("/v1/usage", "{}", content_type="application/json", headers=alice.auth)
    assert posted.status_code == 405 and posted["Allow"] == "GET" and "error" in posted.json()


@pytest.mark.django_db(transaction=True)  # the server process must see committed rows
def test_served_by_uvicorn_after_real_requests_through_the_mock_upstream(live_server_url: str, mock_upstream_url: str,
                                                                          transactional_db: None) -> None:
    alice = make_party("alice")
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    Price.objects.create(model="mock", effective_from=date(2020, 1, 1), input_per_million=Decimal("2.500001"),
                         output_per_million=Decimal("10"))
    chat = {"model": "mock", "messages": [{"role": "user", "content": "Say hello"}]}
    with httpx.Client(base_url=live_server_url, headers=alice.auth, timeout=10) as http:
        for stream in (False, True, False):
            assert http.post("/v1/chat/completions", json={**chat, "stream": stream}).status_code == 200
        assert http.post("/v1/chat/completions", json={**chat, "max_tokens": -1}).status_code == 400
        deadline = time.monotonic() + 5
        while UsageRecord.objects.filter(key=alice.key).count() < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        answer = http.get("/v1/usage", params={"period": "month"})
    assert answer.status_code == 200
    today = timezone.now().astimezone(UTC).date()
    expected = ledger(alice.key.pk, midnight(today.replace(day=1)), midnight(today) + timedelta(days=1))
    assert expected["requests"] == 4 and expected["refusals"] == 1 and expected["cost_picos"] > 0
    assert figures(answer.json()) == expected
