"""The management API: tokens and sessions, operators and owners, and bob never reaching alice's objects (404)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client, override_settings

from accounts import services
from accounts.keys import lookup
from accounts.models import ApiKey, Membership, Tenant
from billing.models import Budget, Price
from proxy.models import Provider

from ..conftest import Party
from ..factories import make_user
from .conftest import token_client

pytestmark = pytest.mark.django_db


def test_a_management_token_or_a_session_signs_in_and_a_v1_key_does_not(alice: Party) -> None:
    assert Client().get("/api/keys/").status_code in (401, 403)
    assert token_client(alice.user).get("/api/keys/").status_code == 200
    bad = Client(headers={"Authorization": "Bearer tgm-000000000000-nope"}).get("/api/keys/")
    assert bad.status_code == 401 and "Invalid or revoked" in bad.json()["detail"]
    assert Client(headers={"Authorization": f"Bearer {alice.secret}"}).get("/api/keys/").status_code in (401, 403)
    session = Client(enforce_csrf_checks=True)
    session.force_login(alice.user)
    assert session.get("/api/keys/").status_code == 200
    assert session.post("/api/keys/", {"tenant": "alice", "name": "x"}).status_code == 403  # no CSRF token


def test_a_revoked_token_stops_working(alice: Party) -> None:
    token, plaintext = services.issue_management_token(user=alice.user, name="ci")
    client = Client(headers={"Authorization": f"Bearer {plaintext}"})
    assert client.get("/api/keys/").status_code == 200
    token.revoked_at = token.created_at
    token.save()
    assert client.get("/api/keys/").status_code == 401


def test_owners_manage_their_keys_and_the_plaintext_comes_once(alice: Party) -> None:
    api = token_client(alice.user)
    created = api.post("/api/keys/", {"tenant": "alice", "name": "backend", "allowed_models": ["demo"]},
                       content_type="application/json")
    assert created.status_code == 201
    body = created.json()
    assert lookup(body["key"]).key_id == body["id"] and body["status"] == "active"
    assert "key" not in api.get(f"/api/keys/{body['id']}/").json()
    assert api.patch(f"/api/keys/{body['id']}/", {"name": "backend-2"}, content_type="application/json").status_code == 200
    limited = api.patch(f"/api/keys/{body['id']}/", {"requests_per_minute": 1}, content_type="application/json")
    assert limited.status_code == 200 and ApiKey.objects.get(pk=body["id"]).requests_per_minute is None  # operators' field
    rotated = api.post(f"/api/keys/{body['id']}/rotate/")
    assert rotated.status_code == 201 and lookup(rotated.json()["key"]).key_id == rotated.json()["id"]
    assert api.post(f"/api/keys/{rotated.json()['id']}/revoke/").json()["status"] == "revoked"
    assert api.delete(f"/api/keys/{body['id']}/").status_code == 405  # keys are revoked, never deleted


def test_bob_cannot_read_or_change_alices_keys(alice: Party, bob: Party) -> None:
    api = token_client(bob.user)
    assert [k["tenant"] for k in api.get("/api/keys/").json()["results"]] == ["bob"]
    for method, path in (("get", ""), ("patch", ""), ("post", "revoke/"), ("post", "rotate/")):
        response = getattr(api, method)(f"/api/keys/{alice.key.pk}/{path}", {"name": "x"}, content_type="application/json")
        assert response.status_code == 404, (method, path)
    refused = api.post("/api/keys/", {"tenant": "alice", "name": "sneaky"}, content_type="application/json")
    assert refused.status_code == 400 and "does not exist" in str(refused.json()["tenant"])
    assert ApiKey.objects.get(pk=alice.key.pk).revoked_at is None and not ApiKey.objects.filter(name="sneaky").exists()


def test_owners_manage_their_budgets_and_bob_cannot_touch_alices(alice: Party, bob: Party) -> None:
    api = token_client(alice.user)
    made = api.post("/api/budgets/", {"tenant": "alice", "key": alice.key.pk, "amount": "25.00", "period": "month"},
                    content_type="application/json")
    assert made.status_code == 201 and made.json()["this_period"]["limit_micros"] == 25_000_000
    wrong_key = api.post("/api/budgets/", {"tenant": "alice", "key": bob.key.pk, "amount": "1.00"},
                         content_type="application/json")
    assert wrong_key.status_code == 400 and "does not exist" in str(wrong_key.json()["key"])
    budget_id = made.json()["id"]
    assert api.patch(f"/api/budgets/{budget_id}/", {"alert_thresholds": "90"}, content_type="application/json").status_code == 200
    bobs = token_client(bob.user)
    assert bobs.get("/api/budgets/").json()["results"] == []
    assert bobs.get(f"/api/budgets/{budget_id}/").status_code == 404
    assert bobs.patch(f"/api/budgets/{budget_id}/", {"amount": "999"}, content_type="application/json").status_code == 404
    assert bobs.delete(f"/api/budgets/{budget_id}/").status_code == 404
    assert Budget.objects.get(pk=budget_id).amount == Decimal("25.00")


def test_tenants_are_the_operators_and_owners_only_read_their_own(alice: Party, bob: Party, operator: Client) -> None:
    owner = token_client(alice.user)
    assert [t["slug"] for t in owner.get("/api/tenants/").json()["results"]] == ["alice"]
    assert owner.get("/api/tenants/bob/").status_code == 404
    assert owner.patch("/api/tenants/alice/", {"name": "x"}, content_type="application/json").status_code == 403
    made = operator.post("/api/tenants/", {"name": "Carol", "slug": "carol", "timezone": "Europe/Berlin"},
                         content_type="application/json")
    assert made.status_code == 201 and Tenant.objects.filter(slug="carol").exists()
    assert operator.patch("/api/tenants/bob/", {"requests_per_minute": 60}, content_type="application/json").status_code == 200
    assert {t["slug"] for t in operator.get("/api/tenants/").json()["results"]} == {"alice", "bob", "carol"}


def test_members_who_are_not_owners_manage_nothing(alice: Party) -> None:
    member = make_user("alice-member", tenant=alice.tenant, role=Membership.Role.MEMBER)
    api = token_client(member)
    assert api.get("/api/keys/").json()["results"] == [] and api.get(f"/api/keys/{alice.key.pk}/").status_code == 404


def test_prices_providers_and_routes_are_for_operators(alice: Party, operator: Client) -> None:
    owner = token_client(alice.user)
    for path in ("/api/prices/", "/api/providers/", "/api/routes/", "/api/deployments/"):
        assert owner.get(path).status_code == 403
    price = operator.post("/api/prices/", {"model": "gpt-4o", "input_per_million": "2.50", "output_per_million": "10.00",
                                           "effective_from": "2026-01-01"}, content_type="application/json")
    assert price.status_code == 201 and Price.objects.get().input_per_million == Decimal("2.50")
    provider = operator.post("/api/providers/", {"name": "openai", "kind": "openai_compatible", "preset": "openai",
                                                 "api_key": "sk-very-secret"}, content_type="application/json")
    assert provider.status_code == 201 and provider.json()["has_credential"] is True
    assert "sk-very-secret" not in provider.content.decode() and "sk-very-secret" not in operator.get("/api/providers/").content.decode()
    assert Provider.objects.get(name="openai").credential() == "sk-very-secret"
    route = operator.post("/api/routes/", {"name": "gpt-4o"}, content_type="application/json")
    assert route.status_code == 201
    deployment = operator.post("/api/deployments/", {"route": "gpt-4o", "provider": "openai", "upstream_model": "gpt-4o"},
                               content_type="application/json")
    assert deployment.status_code == 201
    assert operator.get("/api/routes/").json()["results"][0]["deployments"][0]["provider"] == "openai"


class Clock:
    """django-ratelimit's clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@override_settings(TOLLGATE_API_RATE="3/m")
def test_the_api_is_rate_limited_per_user_and_tells_the_real_wait(alice: Party, bob: Party,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import django_ratelimit.core

    clock = Clock(1_800_000_000.0)
    monkeypatch.setattr(django_ratelimit.core, "time", clock)
    api = token_client(alice.user)
    answers = [api.get("/api/keys/") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[-1].json()["detail"].startswith("Request was throttled")
    wait = int(answers[-1]["Retry-After"])
    assert 1 <= wait <= 60
    assert token_client(bob.user).get("/api/keys/").status_code == 200  # per user
    clock.now += wait - 1
    assert api.get("/api/keys/")["Retry-After"] == "1"  # the same window, one second left
    clock.now += 1
    assert api.get("/api/keys/").status_code == 200  # exactly when it said


def test_the_schema_and_docs_page_work_offline(alice: Party) -> None:
    api = token_client(alice.user)
    schema = api.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/keys/", "/api/keys/{id}/rotate/", "/api/budgets/", "/api/tenants/{slug}/", "/api/prices/"} <= set(paths)
    assert "managementToken" in schema.json()["components"]["securitySchemes"]
    page = api.get("/api/docs/").content.decode()
    assert "swagger-ui" in page and "/static/drf_spectacular_sidecar/" in page and "cdn" not in page.lower()


def test_a_token_whose_secret_has_dashes_works(alice: Party, monkeypatch: pytest.MonkeyPatch) -> None:
    import secrets

    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: "with-some-dashes-in-it")
    _, plaintext = services.issue_management_token(user=alice.user, name="dashes")
    assert plaintext.count("-") > 2
    assert Client(headers={"Authorization": f"Bearer {plaintext}"}).get("/api/keys/").status_code == 200


def test_operators_issue_a_token_in_the_admin_and_see_it_once(admin_client: Client, alice: Party) -> None:
    response = admin_client.post("/admin/accounts/managementtoken/add/", {"user": alice.user.pk, "name": "deploys"},
                                 follow=True)
    text = response.content.decode()
    plaintext = next(w for w in text.replace("<", " ").replace(">", " ").split() if w.startswith("tgm-") and len(w) > 30)
    assert Client(headers={"Authorization": f"Bearer {plaintext}"}).get("/api/keys/").status_code == 200
    listing = admin_client.get("/admin/accounts/managementtoken/").content.decode()
    assert plaintext not in listing and "deploys" in listing
    token = alice.user.management_tokens.get()
    admin_client.post("/admin/accounts/managementtoken/", {"action": "revoke_selected", "_selected_action": [token.pk]})
    assert Client(headers={"Authorization": f"Bearer {plaintext}"}).get("/api/keys/").status_code == 401
