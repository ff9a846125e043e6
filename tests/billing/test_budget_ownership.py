"""Who set a budget: an owner cannot lift their operator's budget (API and pages), only restrict with budgets of their
own and change alerts; bob never reaches alice's budgets."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from accounts import services
from accounts.models import Membership
from billing.models import Budget

from ..conftest import Party
from ..factories import make_user


pytestmark = pytest.mark.django_db

# Every field of a budget an owner may not change when the operator set it, with a value that would lift or move it.
LIFTING = {"amount": "1000000", "hard": False, "is_active": False, "period": "lifetime", "name": "mine now"}


def token_client(user: User) -> Client:
    _, token = services.issue_management_token(user=user, name="test")
    return Client(headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def operators_budget(alice: Party) -> Budget:
    return Budget.objects.create(tenant=alice.tenant, amount=Decimal("10.00"), period="month", name="Operator cap")


def patch(api: Client, budget: Budget, body: dict[str, Any]) -> Any:
    return api.patch(f"/api/budgets/{budget.pk}/", body, content_type="application/json")


def put(api: Client, budget: Budget, **changes: Any) -> Any:
    body = {"tenant": budget.tenant.slug, "key": budget.key_id, "name": budget.name, "amount": str(budget.amount),
            "period": budget.period, "hard": budget.hard, "alert_thresholds": budget.alert_thresholds,
            "is_active": budget.is_active, **changes}
    return api.put(f"/api/budgets/{budget.pk}/", json.dumps(body), content_type="application/json")


@pytest.mark.parametrize("field", sorted(LIFTING))
def test_an_owner_cannot_patch_or_put_any_limit_of_the_operators_budget(
    alice: Party, operators_budget: Budget, field: str
) -> None:
    api = token_client(alice.user)
    for response in (patch(api, operators_budget, {field: LIFTING[field]}), put(api, operators_budget, **{field: LIFTING[field]})):
        assert response.status_code == 403, response.content
        assert field in response.json()["detail"] and "set by your Tollgate operator" in response.json()["detail"]
    assert limits_of(Budget.objects.get(pk=operators_budget.pk)) == limits_of(operators_budget)


def limits_of(budget: Budget) -> tuple[object, ...]:
    return budget.amount, budget.hard, budget.is_active, budget.period, budget.name, budget.key_id, budget.set_by


def test_an_owner_cannot_move_the_operators_budget_to_another_key(alice: Party, operators_budget: Budget) -> None:
    refused = patch(token_client(alice.user), operators_budget, {"key": alice.key.pk})
    assert refused.status_code == 403 and Budget.objects.get(pk=operators_budget.pk).key_id is None


def test_an_owner_cannot_delete_the_operators_budget_and_spends_no_further(alice: Party, operators_budget: Budget) -> None:
    api = token_client(alice.user)
    refused = api.delete(f"/api/budgets/{operators_budget.pk}/")
    assert refused.status_code == 403 and "delete" in refused.json()["detail"]
    assert Budget.objects.filter(pk=operators_budget.pk, is_active=True, hard=True, amount=Decimal("10.00")).exists()


def test_an_owner_changes_the_alert_thresholds_of_the_operators_budget(alice: Party, operators_budget: Budget) -> None:
    api = token_client(alice.user)
    changed = patch(api, operators_budget, {"alert_thresholds": "25,75"})
    assert changed.status_code == 200 and changed.json()["set_by"] == "operator"
    # A PUT that repeats every other field as it is, and changes the thresholds, is fine too.
    assert put(api, operators_budget, alert_thresholds="90").status_code == 200
    assert Budget.objects.get(pk=operators_budget.pk).alert_thresholds == "90"
    bad = patch(api, operators_budget, {"alert_thresholds": "lots"})
    assert bad.status_code == 400 and "alert_thresholds" in bad.json()


def test_an_owners_own_budgets_are_theirs_to_change_and_remove(alice: Party, operators_budget: Budget) -> None:
    api = token_client(alice.user)
    made = api.post("/api/budgets/", {"tenant": "alice", "amount": "2.50", "period": "day", "set_by": "operator"},
                    content_type="application/json")
    assert made.status_code == 201 and made.json()["set_by"] == "tenant"  # set_by is not the caller's to choose
    own = Budget.objects.get(pk=made.json()["id"])
    for field, value in LIFTING.items():
        assert patch(api, own, {field: value}).status_code == 200, field
    assert api.delete(f"/api/budgets/{own.pk}/").status_code == 204
    assert list(Budget.objects.values_list("pk", flat=True)) == [operators_budget.pk]


def test_budgets_an_operator_adds_are_the_operators_and_operators_change_any(
    alice: Party, operators_budget: Budget
) -> None:
    operator = token_client(User.objects.create_user("ops", is_staff=True))
    made = operator.post("/api/budgets/", {"tenant": "alice", "amount": "0.000150"}, content_type="application/json")
    assert made.status_code == 201 and made.json()["set_by"] == "operator"
    assert Budget.objects.get(pk=made.json()["id"]).amount_micros == 150  # micro-dollars, not rounded to cents
    owners = token_client(alice.user).post("/api/budgets/", {"tenant": "alice", "amount": "1"}, content_type="application/json")
    assert patch(operator, Budget.objects.get(pk=owners.json()["id"]), {"hard": False}).status_code == 200
    assert patch(operator, operators_budget, {"amount": "20", "is_active": False}).status_code == 200
    assert operator.delete(f"/api/budgets/{operators_budget.pk}/").status_code == 204


@pytest.mark.parametrize("amount", ["0", "-1", "0.0000001", "1e400", "NaN", "12345678901234.000001"])
def test_amounts_out_of_range_are_400_not_500(alice: Party, amount: str) -> None:
    response = token_client(alice.user).post("/api/budgets/", {"tenant": "alice", "amount": amount},
                                             content_type="application/json")
    assert response.status_code == 400 and "amount" in response.json()


def test_bob_cannot_see_or_touch_alices_budgets_whoever_set_them(alice: Party, bob: Party, operators_budget: Budget) -> None:
    own = Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), set_by=Budget.SetBy.TENANT, name="alice's own")
    api = token_client(bob.user)
    assert api.get("/api/budgets/").json()["results"] == []
    for budget in (operators_budget, own):
        assert api.get(f"/api/budgets/{budget.pk}/").status_code == 404
        assert patch(api, budget, {"alert_thresholds": "1"}).status_code == 404
        assert put(api, budget).status_code == 404
        assert api.delete(f"/api/budgets/{budget.pk}/").status_code == 404
    mine = api.post("/api/budgets/", {"tenant": "bob", "amount": "1"}, content_type="application/json").json()
    moved = api.patch(f"/api/budgets/{mine['id']}/", {"tenant": "alice"}, content_type="application/json")
    assert moved.status_code == 400 and "does not exist" in str(moved.json()["tenant"])
    assert Budget.objects.filter(tenant=alice.tenant).count() == 2


def test_the_schema_documents_the_refusals(alice: Party) -> None:
    schema = token_client(alice.user).get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"}).json()
    item = schema["paths"]["/api/budgets/{id}/"]
    assert {"403", "400", "404"} <= set(item["patch"]["responses"]) and "403" in item["delete"]["responses"]
    assert schema["components"]["schemas"]["Budget"]["properties"]["set_by"]["readOnly"] is True


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_on_the_budgets_page_owners_add_and_remove_their_own_and_not_the_operators(
    alice: Party, operators_budget: Budget
) -> None:
    owner = signed_in(alice.user)
    page = owner.get("/budgets/").content.decode()
    assert "Operator cap" in page and "your operator" in page and "Add a budget" in page
    added = owner.post("/budgets/", {"name": "Team cap", "amount": "0.000500", "period": "day", "hard": "on",
                                     "alert_thresholds": "50,100", "key": alice.key.pk})
    assert added.status_code == 302
    own = Budget.objects.get(name="Team cap")
    assert (own.set_by, own.amount_micros, own.key_id) == ("tenant", 500, alice.key.pk)
    assert "$0.0005" in owner.get("/budgets/").content.decode()

    refused = owner.post("/budgets/", {"remove": str(operators_budget.pk)})
    assert refused.status_code == 403 and "set by your Tollgate operator" in refused.content.decode()
    assert Budget.objects.filter(pk=operators_budget.pk).exists()
    for garbage in ("x", "99999999999999999999", "²"):
        assert owner.post("/budgets/", {"remove": garbage}).status_code == 404
    assert owner.post("/budgets/", {"remove": str(own.pk)}).status_code == 302
    assert not Budget.objects.filter(pk=own.pk).exists()
    # The thresholds of the operator's budget stay the owner's to change.
    form = {f"b{operators_budget.pk}-alert_thresholds": "60"}
    assert owner.post(f"/budgets/{operators_budget.pk}/thresholds/", form).status_code == 302
    assert Budget.objects.get(pk=operators_budget.pk).alert_thresholds == "60"


def test_members_and_bob_cannot_add_or_remove_budgets_on_the_page(alice: Party, bob: Party) -> None:
    own = Budget.objects.create(tenant=alice.tenant, amount=Decimal("1"), set_by=Budget.SetBy.TENANT, name="alice's own")
    viewer = signed_in(make_user("alice-member", tenant=alice.tenant, role=Membership.Role.MEMBER))
    assert "Add a budget" not in viewer.get("/budgets/").content.decode()
    assert viewer.post("/budgets/", {"name": "x", "amount": "1", "period": "day", "alert_thresholds": "50"}).status_code == 403
    assert viewer.post("/budgets/", {"remove": str(own.pk)}).status_code == 403
    stranger = signed_in(bob.user)
    assert stranger.post("/budgets/", {"remove": str(own.pk)}).status_code == 404
    assert stranger.post("/budgets/", {"name": "x", "amount": "1", "period": "day", "alert_thresholds": "50",
                                       "key": alice.key.pk}).status_code == 200  # alice's key is no choice of bob's
    assert list(Budget.objects.values_list("name", flat=True)) == ["alice's own"]
