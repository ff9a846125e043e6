"""Usage by project: the rollups split a key's spend exactly between the projects it was in, the usage API groups
and filters by project, the dashboard shows spend per project, and bob never reads alice's project usage."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import Sum
from django.test import Client

from accounts.projects import create_project, set_key_project
from billing import rollups
from billing.models import UsageRecord, UsageRollup
from proxy import routing
from proxy.services import ensure_demo_route

from ..api.conftest import token_client
from ..conftest import Party

pytestmark = pytest.mark.django_db

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Hello there"}]}
HOUR = datetime(2026, 11, 2, 10, tzinfo=UTC)


def chat(party: Party) -> UsageRecord:
    before = UsageRecord.objects.order_by("-id").values_list("id", flat=True).first() or 0
    response = Client().post("/v1/chat/completions", json.dumps(CHAT), content_type="application/json",
                             headers=party.auth)
    assert response.status_code == 200, response.content
    return UsageRecord.objects.get(id__gt=before)


def place(row: UsageRecord, at: datetime, cost: int) -> None:
    """Put a request's row at a known time and cost, so the sums below are exact to the pico-dollar."""
    UsageRecord.objects.filter(pk=row.pk).update(created_at=at, cost_picos=cost)


def ledger_by(field: str, **scope: Any) -> dict[Any, int]:
    rows = UsageRecord.objects.filter(**scope).values(field).annotate(cost=Sum("cost_picos")).order_by()
    return {row[field]: row["cost"] for row in rows}


def rolled_by(granularity: str, **scope: Any) -> dict[Any, int]:
    rows = (UsageRollup.objects.filter(granularity=granularity, **scope).values("project_id")
            .annotate(cost=Sum("cost_picos")).order_by())
    return {row["project_id"]: row["cost"] for row in rows}


@pytest.fixture
def moved(alice: Party, bob: Party) -> dict[str, Any]:
    """Alice's key makes requests in Search, then in Ads, then in no project, all within one UTC hour; bob's key
    is in his own project, also named search."""
    ensure_demo_route()
    routing.invalidate()
    search = create_project(tenant=alice.tenant, name="Search", slug="search")
    ads = create_project(tenant=alice.tenant, name="Ads", slug="ads")
    bobs = create_project(tenant=bob.tenant, name="Bob's search", slug="search")
    set_key_project(key=bob.key, project=bobs)
    plan = [(search, 1_000_000_000_001), (search, 2_000_000_000_003), (ads, 7), (ads, 123_456_789), (None, 5)]
    for minute, (project, cost) in enumerate(plan):
        set_key_project(key=alice.key, project=project)
        row = chat(alice)
        assert row.project_id == (project.pk if project else None)
        place(row, HOUR + timedelta(minutes=minute), cost)
    place(chat(bob), HOUR + timedelta(minutes=30), 555_555)
    rollups.roll_up()
    return {"search": search, "ads": ads, "bobs": bobs}


def test_rollups_split_a_moved_keys_spend_exactly_by_project(alice: Party, moved: dict[str, Any]) -> None:
    search, ads = moved["search"], moved["ads"]
    expected = {search.pk: 3_000_000_000_004, ads.pk: 123_456_796, None: 5}
    assert ledger_by("project_id", tenant=alice.tenant) == expected
    for granularity in ("hour", "day"):
        assert rolled_by(granularity, tenant=alice.tenant) == expected, granularity
        # one key, one hour, three rollup rows: one per project it was in
        assert UsageRollup.objects.filter(granularity=granularity, key=alice.key).count() == 3
    assert rolled_by("day", tenant=moved["bobs"].tenant) == {moved["bobs"].pk: 555_555}
    before = sorted(UsageRollup.objects.values_list("granularity", "project_id", "cost_picos", "requests"), key=repr)
    rollups.rebuild("hour", HOUR, HOUR + rollups.HOUR)
    rollups.rebuild("day", HOUR.replace(hour=0), HOUR.replace(hour=0) + rollups.DAY)
    assert sorted(UsageRollup.objects.values_list("granularity", "project_id", "cost_picos", "requests"), key=repr) == before


def test_a_late_row_rebuilds_its_projects_rollup(alice: Party, moved: dict[str, Any]) -> None:
    set_key_project(key=alice.key, project=moved["ads"])
    place(chat(alice), HOUR + timedelta(minutes=50), 1_000)
    rollups.roll_up()
    assert rolled_by("day", tenant=alice.tenant)[moved["ads"].pk] == 123_456_796 + 1_000
    assert rolled_by("day", tenant=alice.tenant) == ledger_by("project_id", tenant=alice.tenant)


def usage(api: Client, **query: str) -> Any:
    answer = api.get("/api/usage/", {"start": "2026-11-02", "end": "2026-11-02", **query})
    assert answer.status_code == 200, answer.content
    return answer.json()["results"]


def test_the_usage_api_groups_by_project(alice: Party, bob: Party, moved: dict[str, Any]) -> None:
    operator = token_client(User.objects.create_user("ops", is_staff=True))
    rows = usage(operator, group_by="tenant,project")
    shown = {(r["tenant"], r["project"], r["project_id"]): r["cost_picos"] for r in rows}
    # Two projects named search, one per tenant, are two rows.
    assert shown == {("alice", "search", moved["search"].pk): 3_000_000_000_004,
                     ("alice", "ads", moved["ads"].pk): 123_456_796, ("alice", None, None): 5,
                     ("bob", "search", moved["bobs"].pk): 555_555}
    hourly = usage(token_client(alice.user), group_by="project", granularity="hour")
    assert {r["project"]: (r["requests"], r["cost_picos"]) for r in hourly} == {
        "search": (2, 3_000_000_000_004), "ads": (2, 123_456_796), None: (1, 5)}
    assert all(r["bucket"] == "2026-11-02T10:00:00Z" for r in hourly)
    text = operator.get("/api/usage/", {"start": "2026-11-02", "end": "2026-11-02", "group_by": "project",
                                        "tenant": "alice", "format": "csv"})
    lines = list(csv.DictReader(io.StringIO(b"".join(text.streaming_content).decode())))
    assert {(line["project"], line["project_id"], line["cost_picos"]) for line in lines} == {
        ("search", str(moved["search"].pk), "3000000000004"), ("ads", str(moved["ads"].pk), "123456796"), ("", "", "5")}


def test_the_usage_api_filters_by_project_slug_or_id(alice: Party, moved: dict[str, Any]) -> None:
    api = token_client(alice.user)
    by_slug = usage(api, project="search", group_by="key")
    assert [(r["key"], r["cost_picos"], r["requests"]) for r in by_slug] == [(alice.key.pk, 3_000_000_000_004, 2)]
    by_id = usage(api, project=str(moved["ads"].pk), group_by="")
    assert [(r["cost_picos"], r["requests"]) for r in by_id] == [(123_456_796, 2)]


def test_bob_cannot_read_alices_project_usage(alice: Party, bob: Party, moved: dict[str, Any]) -> None:
    as_bob = token_client(bob.user)
    for project in (str(moved["ads"].pk), "ads", str(moved["search"].pk)):
        refused = as_bob.get("/api/usage/", {"start": "2026-11-02", "end": "2026-11-02", "project": project})
        assert refused.status_code == 400 and "project" in refused.json(), project
    # His own "search" is his project only, never alice's of the same slug.
    assert [(r["project"], r["cost_picos"]) for r in usage(as_bob, project="search", group_by="project")] == [
        ("search", 555_555)]
    assert {r["tenant"] for r in usage(as_bob, group_by="tenant,project")} == {"bob"}
    for bad in ("x" * 65, "-1", "search,ads", "0", str(2**63)):
        assert as_bob.get("/api/usage/", {"project": bad}).status_code == 400, bad


def test_the_dashboard_shows_spend_by_project(alice: Party, bob: Party) -> None:
    today = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    search = create_project(tenant=alice.tenant, name="Search", slug="search")
    create_project(tenant=bob.tenant, name="Bob's hidden project", slug="hidden")
    owner = Client()
    owner.force_login(alice.user)
    for project, cost in ((search, 2_500_000_000_000), (None, 1_000_000_000_000)):
        UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, project=project, endpoint="chat",
                                   public_model="gpt-4o", end_reason="complete", status_code=200, cost_picos=cost,
                                   prompt_tokens=10, completion_tokens=5, latency_ms=100, created_at=today)
    rollups.roll_up()
    response = owner.get("/")
    by_project = {r["name"]: r["cost"] for r in response.context["by_project"]}
    assert by_project == {"Search": "$2.50", "(no project)": "$1.00"}
    page = response.content.decode()
    assert "By project" in page and "Bob&#x27;s hidden project" not in page
    bobs_view = Client()
    bobs_view.force_login(bob.user)
    answer = bobs_view.get("/")
    assert answer.context["by_project"] == [] and "Search" not in answer.content.decode()


def test_the_dashboard_has_no_project_table_without_projects(alice: Party) -> None:
    UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", public_model="gpt-4o",
                               end_reason="complete", status_code=200, cost_picos=1, created_at=datetime.now(UTC))
    rollups.roll_up()
    owner = Client()
    owner.force_login(alice.user)
    response = owner.get("/")
    assert response.context["by_project"] is None and "By project" not in response.content.decode()


def test_tagged_usage_groups_by_project_too(alice: Party, moved: dict[str, Any]) -> None:
    UsageRecord.objects.filter(tenant=alice.tenant, project=moved["ads"]).update(tags=",team:ads,")
    rows = usage(token_client(alice.user), tag="team:ads", group_by="project")
    assert [(r["project"], r["cost_picos"]) for r in rows] == [("ads", 123_456_796)]
    totals: dict[str, int] = defaultdict(int)
    for r in usage(token_client(alice.user), group_by="project", project="ads", tag="team:ads"):
        totals[r["project"]] += r["cost_picos"]
    assert dict(totals) == {"ads": 123_456_796}


def test_the_projects_page_counts_pruned_days_from_the_rollups(alice: Party) -> None:
    from billing import usage as usage_module
    from billing.models import RollupState

    search = create_project(tenant=alice.tenant, name="Search", slug="search")
    month = usage_module.month_so_far()
    for project, cost, at in ((search, 3_000_000_000_000, month.starts_at), (search, 1_000_000_000_000, None),
                              (None, 2_000_000_000_000, month.starts_at)):
        UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, project=project, endpoint="chat",
                                   public_model="gpt-4o", end_reason="complete", status_code=200, cost_picos=cost,
                                   created_at=at or datetime.now(UTC))
    rollups.roll_up()
    # The first day of the month is pruned from the ledger: its spend is read from its day rollup.
    UsageRecord.objects.filter(created_at__lt=month.starts_at + timedelta(days=1)).delete()
    RollupState.objects.filter(name=rollups.STATE).update(pruned_before=month.starts_at + timedelta(days=1))
    owner = Client()
    owner.force_login(alice.user)
    page = owner.get("/projects/").content.decode()
    # Search: $3 from the pruned first day's rollup and $1 from the ledger (on the 1st, both from the rollup).
    assert "$4.00" in page and "Keys in no project spent $2.00" in page
