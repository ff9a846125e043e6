"""Budgets narrower than a tenant or a key: per model (or model glob), project, tag and end user. Which requests they
cover, that every budget that applies must admit, that they settle exactly what the ledger holds for their scope,
their alerts, and how operators and tenants set them."""

from __future__ import annotations

import fnmatch
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from accounts.models import ApiKey, Project
from billing import alerts, budgets, rollups, scopes
from billing.models import Budget, Price, RollupState, UsageRecord, UsageRollup
from proxy import limits, routing
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..factories import make_key, make_route
from ..proxy.retrying import Clock, clock, deploy, healthy  # noqa: F401 (fixtures)
from ..proxy.retrying import chat as retrying_chat


@pytest.fixture(autouse=True)
def demo(db: None) -> None:
    ensure_demo_route()
    for name in ("demo-mini", "other"):
        make_route(name, upstream_model="demo", kind="demo", provider_name="demo")
    for name in ("demo", "demo-mini", "other"):
        Price.objects.create(model=name, input_per_million=Decimal("1000"), output_per_million=Decimal("2000"))
    routing.invalidate()
    limits.forget_budgets()


def project_of(party: Party, slug: str = "search") -> Project:
    project = Project.objects.create(tenant=party.tenant, name=slug.title(), slug=slug)
    ApiKey.objects.filter(pk=party.key.pk).update(project=project)  # before the key's first use: nothing cached
    return project


def chat(client: Client, party: Party, model: str = "demo", tags: str | None = None, **body: object) -> Any:
    payload = {"model": model, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 10, **body}
    headers = {**party.auth, **({"x-tollgate-tags": tags} if tags is not None else {})}
    return client.post("/v1/chat/completions", json.dumps(payload), content_type="application/json", headers=headers)


def row_of(response: Any) -> UsageRecord:
    return UsageRecord.objects.get(request_id=response["x-request-id"])


def spent(budget: Budget) -> int:
    state = budgets.status(Budget.objects.get(pk=budget.pk))
    assert state.reserved_micros == 0
    assert state.spent_picos is not None
    return state.spent_picos


def ledger(budget: Budget) -> int:
    spec = budgets.spec_of(Budget.objects.select_related("tenant", "key", "project").get(pk=budget.pk))
    return budgets.ledger_spent(spec, budgets.period_bounds(spec.period, spec.zone, datetime.now(UTC))[0])


GLOBS = ["gpt-4o*", "gpt-4o", "claude-?-*", "*mini", "[a-c]*", "[!g]*", "openai/gpt.4", "*", "a+b*", "x[0-9]"]
NAMES = ["gpt-4o", "gpt-4o-mini", "gpt-4", "claude-3-opus", "claude-35", "o1-mini", "openai/gpt.4", "openai/gpt-4",
         "a+bc", "aab", "x5", "x55", "GPT-4o"]


def test_model_globs_match_as_fnmatch_does_in_memory_and_in_the_ledger(alice: Party) -> None:
    for i, name in enumerate(NAMES):
        UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", end_reason="complete",
                                   status_code=200, public_model=name, cost_picos=10**i)
    for glob in GLOBS:
        expected = {n for n in NAMES if fnmatch.fnmatchcase(n, glob)}
        matcher = scopes.model_matcher(glob)
        in_memory = {n for n in NAMES if (matcher.fullmatch(n) is not None if matcher else n == glob)}
        rows = UsageRecord.objects.filter(scopes.ledger_q(project_id=None, model=glob, tag="", end_user=""))
        assert in_memory == expected == set(rows.values_list("public_model", flat=True)), glob


@pytest.mark.parametrize("glob", ["", "x" * 201, "gpt 4*", "gpt-[4", "gpt-]", "[]x", "[!]", "[a-]x", "[^a]*", "[a\\]"])
def test_a_model_pattern_that_is_not_a_sane_glob_is_refused(glob: str) -> None:
    with pytest.raises(scopes.BadGlob):
        scopes.glob_regex(glob)


def test_a_tag_in_the_ledger_matches_exactly_and_by_case(alice: Party) -> None:
    for tags in (",team:x,", ",team:xy,", ",Team:x,", ",a,team:x,z,", ""):
        UsageRecord.objects.create(tenant=alice.tenant, endpoint="chat", end_reason="complete", status_code=200,
                                   tags=tags, cost_picos=1)
    rows = UsageRecord.objects.filter(scopes.ledger_q(project_id=None, model="", tag="team:x", end_user=""))
    assert sorted(rows.values_list("tags", flat=True)) == [",a,team:x,z,", ",team:x,"]


def test_a_tenant_without_narrower_budgets_pays_nothing_for_them(alice: Party, bob: Party) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"))
    Budget.objects.create(tenant=bob.tenant, amount=Decimal("1"), model="demo*")
    table = budgets.load_table()
    assert table.narrow == table.modelled == frozenset({bob.tenant.pk})
    assert len(table.applicable(alice.tenant.pk, alice.key.pk, None, "demo", ",t,", "u")) == 1


def test_a_budget_covers_the_requests_matching_every_scope_it_sets(alice: Party) -> None:
    project = project_of(alice)
    made = {
        "tenant": Budget.objects.create(tenant=alice.tenant, amount=Decimal("1")),
        "models": Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), model="demo*"),
        "project": Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), project=project),
        "tag": Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), tag="team:x"),
        "user": Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), end_user="u123"),
        "all": Budget.objects.create(tenant=alice.tenant, key=alice.key, amount=Decimal("1"), project=project,
                                     model="demo-mini", tag="team:x", end_user="u123"),
    }
    names = {b.pk: name for name, b in made.items()}
    table = budgets.load_table()

    def covering(project_id: int | None, model: str, tags: str, user: str, key_id: int | None = alice.key.pk) -> set[str]:
        return {names[s.id] for s in table.applicable(alice.tenant.pk, key_id, project_id, model, tags, user)}

    assert covering(None, "other", "", "") == {"tenant"}
    assert covering(None, "demo", ",team:xy,", "u1234") == {"tenant", "models"}
    assert covering(project.pk, "demo-mini", ",a,team:x,", "u123") == set(made)
    assert covering(project.pk, "demo-mini", ",a,team:x,", "u123", key_id=None) == set(made) - {"all"}
    assert covering(project.pk, "DEMO-mini", ",Team:x,", "U123") == {"tenant", "project"}
    assert str(made["all"]) == f"Month budget of key {alice.key.prefix}, project search, model demo-mini, tag team:x, user u123"


def test_every_budget_that_applies_must_admit_and_the_refusal_names_the_narrow_one(client: Client, alice: Party) -> None:
    tenant = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10"), period="day")
    tagged = Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.03"), period="day", tag="team:x")
    first = chat(client, alice, tags="team:x")  # worst case ~$0.028: fits $0.03 once
    assert first.status_code == 200
    refused = chat(client, alice, tags="team:x,env:prod")
    assert refused.status_code == 429
    assert "the day budget for tag team:x ($0.03)" in refused.json()["error"]["message"]
    assert row_of(refused).gate["denied_by"] == tagged.pk
    assert chat(client, alice).status_code == 200  # untagged: the tag budget does not apply
    assert chat(client, alice, tags="team:y").status_code == 200
    assert spent(tagged) == row_of(first).cost_picos == ledger(tagged)
    assert spent(tenant) == ledger(tenant) == sum(r.cost_picos for r in UsageRecord.objects.all()) > 0


def test_model_project_and_user_budgets_settle_exactly_what_the_ledger_holds_for_them(
    client: Client, alice: Party, bob: Party
) -> None:
    project = project_of(alice)
    other_key, other_secret = make_key(alice.tenant, name="no project")
    no_project = Party(alice.tenant, alice.user, other_key, other_secret)
    made = [Budget.objects.create(tenant=alice.tenant, amount=Decimal("5"), period="day", model="demo*"),
            Budget.objects.create(tenant=alice.tenant, amount=Decimal("5"), period="week", project=project),
            Budget.objects.create(tenant=alice.tenant, amount=Decimal("5"), period="month", end_user="u123"),
            Budget.objects.create(tenant=alice.tenant, amount=Decimal("5"), period="day", model="demo-mini",
                                  project=project, tag="team:x", end_user="u123")]
    Budget.objects.create(tenant=bob.tenant, amount=Decimal("5"), model="*")
    for party, model, tags, user in [(alice, "demo", None, None), (alice, "demo-mini", "team:x", "u123"),
                                     (alice, "other", "team:x", None), (no_project, "demo-mini", "team:x", "u123"),
                                     (no_project, "demo", None, "u12"), (bob, "demo", "team:x", "u123")]:
        extra = {"user": user} if user else {}
        assert chat(client, party, model, tags=tags, **extra).status_code == 200
    rows = UsageRecord.objects.filter(tenant=alice.tenant)
    expected = [sum(r.cost_picos for r in rows if r.public_model.startswith("demo")),
                sum(r.cost_picos for r in rows if r.project_id == project.pk),
                sum(r.cost_picos for r in rows if r.end_user == "u123"),
                sum(r.cost_picos for r in rows if r.public_model == "demo-mini" and r.project_id == project.pk
                    and ",team:x," in r.tags and r.end_user == "u123")]
    assert all(expected) and len({*expected}) == 4
    assert [spent(b) for b in made] == [ledger(b) for b in made] == expected


def test_a_narrow_hard_budget_never_lets_a_request_past_its_whole_amount(client: Client, alice: Party) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.001"), period="day", model="demo-*")
    response = chat(client, alice, "demo-mini")
    assert response.status_code == 429 and "the whole day budget for model demo-*" in response.json()["error"]["message"]
    assert chat(client, alice, "demo").status_code == 200


def test_lifetime_model_and_project_budgets_count_pruned_days_from_their_rollups(alice: Party) -> None:
    project = project_of(alice)
    long_ago = datetime(2020, 3, 1, tzinfo=UTC)
    for model, project_id, cost in (("demo", project.pk, 7), ("demo-mini", None, 11), ("other", project.pk, 13)):
        UsageRollup.objects.create(granularity="day", bucket=long_ago, tenant=alice.tenant, key=alice.key,
                                   project_id=project_id, model=model, provider="demo", requests=1, cost_picos=cost)
    now = datetime.now(UTC)
    RollupState.objects.update_or_create(name=rollups.STATE, defaults={"pruned_before": now - timedelta(days=70)})
    UsageRecord.objects.create(tenant=alice.tenant, endpoint="chat", end_reason="complete", status_code=200,
                               public_model="demo", project=project, cost_picos=1000)
    by_model = Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), period="lifetime", model="demo*")
    by_project = Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), period="lifetime", project=project)
    assert (ledger(by_model), ledger(by_project)) == (1018, 1020)


@pytest.mark.parametrize(("fields", "field"), [
    ({"tag": "team x"}, "tag"), ({"tag": "t" * 65}, "tag"), ({"end_user": "u" * 257}, "end_user"),
    ({"model": "gpt-[4"}, "model"), ({"model": " gpt-4"}, "model"),
    ({"tag": "team:x", "period": "lifetime"}, "period"), ({"end_user": "u1", "period": "lifetime"}, "period"),
])
def test_budget_validation_refuses_bad_scopes(alice: Party, fields: dict[str, str], field: str) -> None:
    budget = Budget(tenant=alice.tenant, amount=Decimal("1"), **fields)
    with pytest.raises(ValidationError) as refused:
        budget.full_clean()
    assert field in refused.value.message_dict


def test_a_budgets_project_is_its_tenants_and_a_key_budgets_is_the_keys(alice: Party, bob: Party) -> None:
    mine, theirs = project_of(alice), Project.objects.create(tenant=bob.tenant, name="Theirs", slug="theirs")
    other = Project.objects.create(tenant=alice.tenant, name="Other", slug="other")
    alice.key.refresh_from_db()
    for project, key in ((theirs, None), (other, alice.key)):
        with pytest.raises(ValidationError) as refused:
            Budget(tenant=alice.tenant, key=key, project=project, amount=Decimal("1")).full_clean()
        assert "project" in refused.value.message_dict
    Budget(tenant=alice.tenant, key=alice.key, project=mine, amount=Decimal("1")).full_clean()
    Budget(tenant=alice.tenant, project=other, model="gpt-4o*", tag="team:x", end_user="u1", amount=Decimal("1")).full_clean()


def test_alerts_climb_per_narrow_budget_and_name_its_scope(alice: Party) -> None:
    from django.core import mail

    now = datetime.now(UTC)
    tagged = Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), period="day", tag="team:x")
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("100"), period="day")
    for model, tags, cost in (("demo", ",team:x,", 600_000), ("other", ",team:y,", 900_000)):
        UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", end_reason="complete",
                                   status_code=200, public_model=model, tags=tags, cost_picos=cost * 10**6, created_at=now)
    [alert_id] = alerts.claim_crossings(now=now)  # $0.60 of the tag's $1; $1.50 of the tenant's $100 is nothing
    alert = alerts.BudgetAlert.objects.get(pk=alert_id)
    assert (alert.budget_id, alert.threshold) == (tagged.pk, 50)
    assert alerts.email_alert(alert_id) is True
    [sent] = mail.outbox
    assert "Day budget of tag team:x reached 50%" in sent.subject
    assert "demo" in sent.body and "other" not in sent.body  # the top models are the budget's own rows
    assert alerts.webhook_payload(alert)["budget"]["scope"] == "tag team:x"  # type: ignore[index]


def test_the_budget_table_is_read_with_a_fixed_number_of_queries(alice: Party, django_assert_num_queries: Any) -> None:
    project = project_of(alice)
    for i in range(5):
        Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), project=project, model=f"m{i}*", tag=f"t{i}")
    with django_assert_num_queries(1):
        table = budgets.load_table()
    assert re.fullmatch(r"Month budget of project search, model m0\*, tag t0",
                        table.by_tenant[alice.tenant.pk][0].name)


def test_a_fallback_is_taken_only_to_a_model_the_same_budgets_cover(
    client: Client, alice: Party, mock_upstream_url: str, clock: Clock
) -> None:
    deploy(mock_upstream_url, "backup", "mock")
    deploy(mock_upstream_url, "primary", "mock-500", max_attempts=1, fallbacks=["backup"])
    for name in ("primary", "backup"):
        Price.objects.create(model=name, input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    named = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10"), period="day", model="primary")
    every = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10"), period="day", model="*")
    # The backup is covered by "*" alone: spend there would land on "primary", which its row would not name.
    refused = retrying_chat(client, alice, "primary")
    assert refused.status_code == 502 and "fallback" not in row_of(refused).gate
    assert [a["route"] for a in row_of(refused).gate["attempts"]] == ["primary"]
    Budget.objects.filter(pk=named.pk).update(is_active=False)
    limits.forget_budgets()
    served = retrying_chat(client, alice, "primary")
    assert served.status_code == 200 and row_of(served).public_model == "backup"
    assert spent(every) == ledger(every) == row_of(served).cost_picos > 0
    # A budget on the fallback alone: the request held nothing for it, so the fallback is not taken either.
    Budget.objects.filter(pk=every.pk).update(model="backup")
    limits.forget_budgets()
    assert retrying_chat(client, alice, "primary").status_code == 502
    assert UsageRecord.objects.filter(public_model="backup").count() == 1
    assert spent(every) == ledger(every)


def management(user: Any) -> Client:
    from accounts import services

    _, token = services.issue_management_token(user=user, name="test")
    return Client(headers={"Authorization": f"Bearer {token}"})


def test_the_api_scopes_a_budget_to_a_project_by_id_or_slug_of_its_own_tenant(alice: Party, bob: Party) -> None:
    mine = project_of(alice)
    theirs = Project.objects.create(tenant=bob.tenant, name="Secret", slug="secret")
    api = management(alice.user)
    by_slug = api.post("/api/budgets/", {"tenant": "alice", "amount": "2", "period": "day", "project": "search",
                                         "model": "gpt-4o*", "tag": "team:x", "end_user": "u123"},
                       content_type="application/json")
    assert by_slug.status_code == 201, by_slug.content
    assert {k: by_slug.json()[k] for k in ("project", "model", "tag", "end_user", "set_by")} == {
        "project": mine.pk, "model": "gpt-4o*", "tag": "team:x", "end_user": "u123", "set_by": "tenant"}
    by_id = api.post("/api/budgets/", {"tenant": "alice", "amount": "2", "project": mine.pk},
                     content_type="application/json")
    assert by_id.status_code == 201 and Budget.objects.get(pk=by_id.json()["id"]).project == mine
    # bob's project is as unknown to alice as one that does not exist, by id or slug
    for value in (theirs.pk, "secret", 2**70, "", True, ["x"]):
        refused = api.post("/api/budgets/", {"tenant": "alice", "amount": "2", "project": value},
                           content_type="application/json")
        assert refused.status_code == 400 and "project" in refused.json(), (value, refused.content)
    assert "secret" not in json.dumps([b.json() for b in (by_slug, by_id)])
    assert not Budget.objects.filter(project=theirs).exists()
    bobs = management(bob.user).get("/api/budgets/").json()
    assert all(b.get("tenant") != "alice" for b in (bobs.get("results", bobs) if isinstance(bobs, dict) else bobs))


@pytest.mark.parametrize(("fields", "field"), [
    ({"tag": "team x"}, "tag"), ({"model": "gpt-[4"}, "model"), ({"end_user": "u" * 257}, "end_user"),
    ({"tag": "team:x", "period": "lifetime"}, "period"),
])
def test_bad_scopes_are_400_on_the_api_and_the_page_not_500(client: Client, alice: Party, fields: dict[str, str],
                                                             field: str) -> None:
    refused = management(alice.user).post("/api/budgets/", {"tenant": "alice", "amount": "1", **fields},
                                          content_type="application/json")
    assert refused.status_code == 400 and field in refused.json(), refused.content
    client.force_login(alice.user)
    page = client.post("/budgets/", {"amount": "1", "period": fields.get("period", "month"), "hard": "on",
                                     "alert_thresholds": "50,80,100", **fields})
    assert page.status_code == 200 and not Budget.objects.exists()
    assert page.context["add_form"].errors.get(field)


def test_an_owner_adds_a_scoped_budget_on_the_page_among_their_own_projects_only(
    client: Client, alice: Party, bob: Party
) -> None:
    mine = project_of(alice)
    theirs = Project.objects.create(tenant=bob.tenant, name="Secret", slug="secret")
    client.force_login(alice.user)
    page = client.get("/budgets/")
    assert b"Search" in page.content and b"Secret" not in page.content
    form = {"amount": "1", "period": "day", "hard": "on", "alert_thresholds": "50,80,100", "model": "demo*",
            "tag": "team:x", "end_user": "u1"}
    assert client.post("/budgets/", {**form, "project": theirs.pk}).status_code == 200  # not one of the choices
    assert not Budget.objects.exists()
    assert client.post("/budgets/", {**form, "project": mine.pk}).status_code == 302
    budget = Budget.objects.get()
    assert (budget.project, budget.model, budget.tag, budget.end_user, budget.set_by) == (mine, "demo*", "team:x", "u1",
                                                                                          "tenant")
    assert b"project search, model demo*, tag team:x, user u1" in client.get("/budgets/").content
    client.force_login(bob.user)
    assert b"team:x" not in client.get("/budgets/").content


def test_the_admin_shows_and_checks_the_scopes(client: Client, alice: Party, bob: Party) -> None:
    from django.contrib.auth.models import User

    theirs = Project.objects.create(tenant=bob.tenant, name="Secret", slug="secret")
    mine = project_of(alice)
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    form = {"tenant": alice.tenant.pk, "amount": "1", "period": "day", "hard": "on", "alert_thresholds": "50,80,100",
            "is_active": "on", "model": "gpt-4o*", "tag": "team:x", "end_user": ""}
    refused = client.post("/admin/billing/budget/add/", {**form, "project": theirs.pk})
    assert refused.status_code == 200 and b"another tenant" in refused.content and not Budget.objects.exists()
    assert client.post("/admin/billing/budget/add/", {**form, "project": mine.pk}).status_code == 302
    listed = client.get("/admin/billing/budget/")
    assert b"project search, model gpt-4o*, tag team:x" in listed.content


def test_a_refusing_narrow_budget_gets_its_refusal_alert(client: Client, alice: Party) -> None:
    tagged = Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.03"), period="day", tag="team:x")
    assert chat(client, alice, tags="team:x").status_code == 200
    assert chat(client, alice, tags="team:x").status_code == 429
    [alert_id] = alerts.claim_refusals()
    alert = alerts.BudgetAlert.objects.get(pk=alert_id)
    assert (alert.budget_id, alert.kind) == (tagged.pk, "refusing")
    assert "Day budget of tag team:x is refusing requests" in alerts.message(alert).subject


def test_requests_of_a_tenant_without_model_budgets_plan_no_fallbacks_at_the_gate(
    client: Client, alice: Party, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned: list[str] = []
    original = routing.plan

    async def plan(caller: Any, targets: list[Any]) -> Any:
        planned.append(targets[0].public_model)
        return await original(caller, targets)

    monkeypatch.setattr(routing, "plan", plan)
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), tag="team:x")  # narrow, but not by model
    assert chat(client, alice, tags="team:y").status_code == 200  # no budget applies: nothing is planned
    assert planned == []
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), model="nothing*")
    limits.forget_budgets()
    assert chat(client, alice, tags="team:y").status_code == 200  # a model budget elsewhere: fallbacks are planned
    assert planned == ["demo"]


def test_a_model_budget_names_the_route_not_one_of_its_aliases(alice: Party) -> None:
    from proxy.models import ModelRoute

    ModelRoute.objects.filter(name="demo-mini").update(aliases=["mini"])
    with pytest.raises(ValidationError) as refused:
        Budget(tenant=alice.tenant, amount=Decimal("1"), model="mini").full_clean()
    assert "'demo-mini'" in refused.value.message_dict["model"][0]
    for model in ("demo-mini", "not-routed-yet", "mini*"):
        Budget(tenant=alice.tenant, amount=Decimal("1"), model=model).full_clean()
