"""Requests by tag, end user and project: the Requests page and its CSV export, the ledger admin and the usage API;
bob never reaches alice's rows by filtering for her tag, her end user or her project."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Project
from billing import rollups
from billing.models import RollupState, UsageRecord

from ..api.conftest import fresh_limits, operator, token_client  # noqa: F401 (fixtures)
from ..conftest import Party

pytestmark = pytest.mark.django_db


def record(party: Party, *, tags: str = "", end_user: str = "", project: Project | None = None,
           at: datetime | None = None, model: str = "gpt-4o", picos: int = 1_000) -> UsageRecord:
    return UsageRecord.objects.create(tenant=party.tenant, key=party.key, endpoint="chat", public_model=model,
                                      provider="openai", end_reason="complete", status_code=200, prompt_tokens=10,
                                      completion_tokens=5, cost_picos=picos, created_at=at or timezone.now(),
                                      tags=tags, end_user=end_user, project=project)


@pytest.fixture
def ledger(alice: Party, bob: Party) -> dict[str, Any]:
    search = Project.objects.create(tenant=alice.tenant, name="Search", slug="search")
    bobs = Project.objects.create(tenant=bob.tenant, name="Bob's", slug="bobs")
    rows = {
        "tagged": record(alice, tags=",env:prod,team:search,", end_user="u-1", project=search),
        "other_tag": record(alice, tags=",team:searching,", end_user="u-10"),
        "plain": record(alice),
        "bobs": record(bob, tags=",team:search,", end_user="u-1", project=bobs, model="bobs-secret-model"),
    }
    return {"rows": rows, "search": search, "bobs": bobs}


def signed_in(party: Party) -> Client:
    client = Client()
    client.force_login(party.user)
    return client


def ids(response: Any) -> set[int]:
    assert response.status_code == 200, response.content[:500]
    return {r["row"].pk for r in response.context["rows"]}


def test_the_requests_page_filters_by_tag_end_user_and_project(alice: Party, ledger: dict[str, Any]) -> None:
    client, rows = signed_in(alice), ledger["rows"]
    assert ids(client.get("/requests/", {"tag": "team:search"})) == {rows["tagged"].pk}  # not team:searching
    assert ids(client.get("/requests/", {"tag": "team:searching"})) == {rows["other_tag"].pk}
    assert ids(client.get("/requests/", {"user": "u-1"})) == {rows["tagged"].pk}  # exact: not u-10
    assert ids(client.get("/requests/", {"project": ledger["search"].pk})) == {rows["tagged"].pk}
    assert ids(client.get("/requests/", {"tag": "env:prod", "user": "u-1", "project": ledger["search"].pk})) == {
        rows["tagged"].pk}
    page = client.get("/requests/").content.decode()
    assert "team:search" in page and "u-10" in page and "Search" in page  # the columns and the project choice
    assert "Bob&#x27;s" not in page and "Bob's" not in page  # only the tenant's own projects are offered


@pytest.mark.parametrize("query", [{"tag": "two words"}, {"tag": "x" * 65}, {"tag": "a,b"}, {"user": "u" * 257},
                                   {"project": "nope"}, {"user": "a\x00b"}])
def test_bad_filters_are_a_form_error_not_a_500(alice: Party, ledger: dict[str, Any], query: dict[str, str]) -> None:
    client = signed_in(alice)
    page = client.get("/requests/", query)
    assert page.status_code == 200 and page.context["form"].errors
    assert client.get("/requests/export.csv", query).status_code == 400


def test_bob_cannot_reach_alices_rows_by_her_tag_user_or_project(bob: Party, ledger: dict[str, Any]) -> None:
    client, rows = signed_in(bob), ledger["rows"]
    assert ids(client.get("/requests/", {"tag": "env:prod"})) == set()
    assert ids(client.get("/requests/", {"user": "u-1"})) == {rows["bobs"].pk}
    refused = client.get("/requests/", {"project": ledger["search"].pk})  # alice's project is not a choice for bob
    assert refused.context["form"].errors and "project" in refused.context["form"].errors
    export = client.get("/requests/export.csv", {"project": ledger["search"].pk})
    assert export.status_code == 400
    lines = csv_rows(client.get("/requests/export.csv", {"tag": "team:search"}))
    assert [line["model"] for line in lines] == ["bobs-secret-model"]


def csv_rows(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_the_export_has_the_filters_rows_with_project_tags_and_end_user(alice: Party, ledger: dict[str, Any]) -> None:
    lines = csv_rows(signed_in(alice).get("/requests/export.csv", {"tag": "team:search"}))
    assert [(line["project"], line["tags"], line["end_user"]) for line in lines] == [
        ("Search", "env:prod,team:search", "u-1")]
    every = csv_rows(signed_in(alice).get("/requests/export.csv"))
    assert len(every) == 3 and {line["tags"] for line in every} == {"env:prod,team:search", "team:searching", ""}


def test_an_end_user_is_never_a_spreadsheet_formula(alice: Party) -> None:
    record(alice, end_user="=HYPERLINK(\"http://x\")")
    [line] = csv_rows(signed_in(alice).get("/requests/export.csv"))
    assert line["end_user"].startswith("'=")


def admin_ids(admin_client: Client, query: dict[str, Any]) -> set[int]:
    response = admin_client.get("/admin/billing/usagerecord/", query)
    assert response.status_code == 200, response.content[:500]
    return {row.pk for row in response.context["cl"].result_list}


def test_the_ledger_admin_filters_by_tag_end_user_and_project(admin_client: Client, ledger: dict[str, Any]) -> None:
    rows = ledger["rows"]
    assert admin_ids(admin_client, {"tag": "team:search"}) == {rows["tagged"].pk, rows["bobs"].pk}
    assert admin_ids(admin_client, {"end_user": "u-1"}) == {rows["tagged"].pk, rows["bobs"].pk}
    assert admin_ids(admin_client, {"project": ledger["search"].pk}) == {rows["tagged"].pk}
    assert admin_ids(admin_client, {"q": "tag:env:prod"}) == {rows["tagged"].pk}
    assert admin_ids(admin_client, {"q": "user:u-10"}) == {rows["other_tag"].pk}
    assert admin_ids(admin_client, {"q": "user:u-1", "project": ledger["bobs"].pk}) == {rows["bobs"].pk}
    page = admin_client.get("/admin/billing/usagerecord/").content.decode()
    assert "alice / Search" in page and "bob / Bob" in page  # projects offered from their own table


@pytest.mark.parametrize("query", [{"tag": "not a tag"}, {"tag": "a\x00"}, {"end_user": "x\x00"}, {"project": "abc"},
                                   {"project": "9" * 30}, {"q": "tag:"}, {"q": "user:" + "u" * 300}])
def test_bad_admin_filters_select_nothing_and_never_fail(admin_client: Client, ledger: dict[str, Any],
                                                         query: dict[str, str]) -> None:
    assert admin_ids(admin_client, query) == set()


def test_the_admin_lists_no_choices_from_the_ledger(admin_client: Client, ledger: dict[str, Any],
                                                    django_assert_max_num_queries: Any) -> None:
    # session + user, the page's rows (with tenant, key, project), the paginator's probe, the projects' choices:
    # no DISTINCT over the ledger for a tag's or an end user's choices.
    with django_assert_max_num_queries(8) as captured:
        admin_client.get("/admin/billing/usagerecord/", {"tag": "team:search"})
    ledger_reads = [q["sql"] for q in captured.captured_queries if "billing_usagerecord" in q["sql"]]
    assert not any("DISTINCT" in sql.upper() for sql in ledger_reads), ledger_reads


def usage(client: Client, **query: str) -> Any:
    answer = client.get("/api/usage/", query)
    assert answer.status_code == 200, answer.content
    return answer.json()["results"]


def test_the_usage_api_filters_by_tag_and_user_from_the_ledger(alice: Party, ledger: dict[str, Any]) -> None:
    api = token_client(alice.user)
    today = timezone.now().astimezone(UTC).date().isoformat()
    [row] = usage(api, tag="team:search", start=today, group_by="tenant,model")
    assert (row["tenant"], row["model"], row["requests"], row["cost_picos"]) == ("alice", "gpt-4o", 1, 1_000)
    assert row["latency_p50_ms"] is None
    [row] = usage(api, tag="team:search", start=today, group_by="project")
    assert (row["project"], row["project_id"], row["requests"]) == ("search", ledger["search"].pk, 1)
    assert usage(api, user="u-10", start=today, project="search") == []  # u-10's request has no project
    [row] = usage(api, user="u-10", start=today, group_by="")
    assert (row["requests"], row["prompt_tokens"], row["total_tokens"]) == (1, 10, 15)
    assert usage(api, tag="team:search", user="u-10", start=today) == []
    hours = usage(api, tag="env:prod", start=today, granularity="hour", group_by="model")
    assert [(r["model"], r["requests"]) for r in hours] == [("gpt-4o", 1)]
    lines = list(csv.DictReader(io.StringIO(b"".join(api.get("/api/usage/", {
        "tag": "team:search", "start": today, "format": "csv"}).streaming_content).decode())))
    assert [(line["tenant"], line["requests"]) for line in lines] == [("alice", "1")]


def test_bob_gets_none_of_alices_usage_by_her_tag_or_user(bob: Party, ledger: dict[str, Any]) -> None:
    api = token_client(bob.user)
    today = timezone.now().astimezone(UTC).date().isoformat()
    assert usage(api, tag="env:prod", start=today) == []
    assert [(r["tenant"], r["requests"]) for r in usage(api, user="u-1", start=today)] == [("bob", 1)]
    assert api.get("/api/usage/", {"tag": "env:prod", "tenant": "alice"}).status_code == 400


def test_operators_see_every_tenants_rows_of_a_tag(operator: Client, ledger: dict[str, Any]) -> None:
    today = timezone.now().astimezone(UTC).date().isoformat()
    assert {r["tenant"]: r["requests"] for r in usage(operator, tag="team:search", start=today)} == {"alice": 1, "bob": 1}


@pytest.mark.parametrize(("query", "param"), [({"tag": "two words"}, "tag"), ({"tag": "x" * 65}, "tag"),
                                              ({"user": "u" * 257}, "user"), ({"user": "a\x00b"}, "user")])
def test_bad_tag_or_user_is_a_400_naming_it(alice: Party, query: dict[str, str], param: str) -> None:
    refused = token_client(alice.user).get("/api/usage/", query)
    assert refused.status_code == 400 and list(refused.json()) == [param]


def test_a_range_the_ledger_no_longer_holds_is_refused(alice: Party, ledger: dict[str, Any]) -> None:
    api = token_client(alice.user)
    today = timezone.now().astimezone(UTC).date()
    pruned = datetime.combine(today - timedelta(days=10), datetime.min.time(), tzinfo=UTC)
    RollupState.objects.update_or_create(name=rollups.STATE, defaults={"pruned_before": pruned})
    refused = api.get("/api/usage/", {"tag": "team:search", "start": (today - timedelta(days=11)).isoformat()})
    assert refused.status_code == 400 and list(refused.json()) == ["start"]
    assert str(pruned.date()) in refused.content.decode()
    assert usage(api, tag="team:search", start=pruned.date().isoformat())[0]["requests"] == 1
    # Without tag or user the rollups answer, pruned days included.
    assert api.get("/api/usage/", {"start": (today - timedelta(days=11)).isoformat()}).status_code == 200
    too_long = api.get("/api/usage/", {"user": "u-1", "start": (today - timedelta(days=200)).isoformat()})
    assert too_long.status_code == 400 and list(too_long.json()) == ["end"]
