"""The operator's model allow-list of a tenant: /v1 refuses other models, keys and the playground only narrow it,
and /v1/models lists what is routed, allowed to the tenant and allowed to the key."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from accounts import services
from accounts.keys import lookup
from accounts.models import ApiKey, Tenant
from billing.models import UsageRecord
from proxy import routing
from proxy.models import ModelRoute
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..factories import make_key, make_route

pytestmark = pytest.mark.django_db


def token_client(user: object) -> Client:
    _, token = services.issue_management_token(user=user, name="test")  # type: ignore[arg-type]
    return Client(headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(autouse=True)
def routes(db: None) -> None:
    ensure_demo_route()
    ModelRoute.objects.filter(name="demo").update(aliases=["toy"])
    make_route("other", upstream_model="other-upstream", base_url="http://127.0.0.1:9/v1")
    make_route("third", upstream_model="third-upstream", base_url="http://127.0.0.1:9/v1")
    routing.invalidate()


def only(party: Party, *models: str) -> Tenant:
    Tenant.objects.filter(pk=party.tenant.pk).update(allowed_models=list(models))
    party.tenant.refresh_from_db()
    return party.tenant


def chat(client: Client, secret: str, model: str) -> object:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}]}
    return client.post("/v1/chat/completions", json.dumps(body), content_type="application/json",
                       headers={"Authorization": f"Bearer {secret}"})


def listed(client: Client, secret: str) -> list[str]:
    response = client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
    return [m["id"] for m in response.json()["data"]]


def test_a_model_outside_the_tenants_list_is_refused_like_a_keys(client: Client, alice: Party, bob: Party) -> None:
    only(alice, "other")
    refused = chat(client, alice.secret, "demo")
    error = refused.json()["error"]
    assert refused.status_code == 403 and (error["code"], error["param"]) == ("model_not_allowed", "model")
    assert "tenant is not allowed to use the model 'demo'" in error["message"]
    row = UsageRecord.objects.get(request_id=refused["x-request-id"])
    assert (row.end_reason, row.status_code, row.error_code) == ("rejected", 403, "model_not_allowed")
    assert chat(client, bob.secret, "demo").status_code == 200  # alice's list is alice's alone


def test_the_tenants_list_names_a_route_by_any_of_its_names(client: Client, alice: Party) -> None:
    only(alice, "toy")  # an alias of demo
    assert chat(client, alice.secret, "demo").status_code == 200
    assert chat(client, alice.secret, "toy").status_code == 200
    assert listed(client, alice.secret) == ["demo"]


def test_models_lists_what_is_routed_and_allowed_to_the_tenant_and_the_key(client: Client, alice: Party) -> None:
    assert listed(client, alice.secret) == ["demo", "other", "third"]
    tenant = only(alice, "demo", "other", "not-routed")
    _, narrow = make_key(tenant, name="narrow", allowed_models=["other"])
    keys_cache_cleared(alice)
    assert listed(client, alice.secret) == ["demo", "other"]
    assert listed(client, narrow) == ["other"]
    assert client.get("/v1/models/third", headers={"Authorization": f"Bearer {alice.secret}"}).status_code == 404


def keys_cache_cleared(party: Party) -> None:
    services.forget_tenant_keys(tenant=party.tenant)  # what the admin and the API do when a tenant changes


def test_a_key_cannot_allow_a_model_its_tenant_may_not_use(alice: Party) -> None:
    tenant = only(alice, "demo", "other")
    with pytest.raises(ValidationError) as refused:
        services.issue_key(tenant=tenant, name="wide", allowed_models=["other", "third"])
    message = refused.value.message_dict["allowed_models"][0]
    assert "third" in message and "demo, other" in message and "narrow" in message
    assert not ApiKey.objects.filter(name="wide").exists()
    key, _ = services.issue_key(tenant=tenant, name="alias", allowed_models=["toy"])  # demo by its alias
    # An empty list on a key means every model the tenant may use, not every routed model.
    _, everything = services.issue_key(tenant=tenant, name="all of the tenant's")
    assert lookup(everything).may_use("demo") and not lookup(everything).may_use("third")


def test_a_rotation_keeps_the_keys_list_when_the_tenant_was_narrowed_since(alice: Party) -> None:
    key, _ = make_key(alice.tenant, name="ci", allowed_models=["third"])
    only(alice, "demo")
    new, secret = services.rotate_key(key=ApiKey.objects.get(pk=key.pk))
    assert new.allowed_models == ["third"] and not lookup(secret).may_use("third")  # /v1 allows what both allow


def test_the_api_refuses_a_key_wider_than_its_tenant(alice: Party) -> None:
    only(alice, "demo")
    api = token_client(alice.user)
    refused = api.post("/api/keys/", {"tenant": "alice", "name": "wide", "allowed_models": ["third"]},
                       content_type="application/json")
    assert refused.status_code == 400 and "third" in refused.json()["allowed_models"][0]
    made = api.post("/api/keys/", {"tenant": "alice", "name": "fine", "allowed_models": ["demo"]},
                    content_type="application/json")
    assert made.status_code == 201
    widened = api.patch(f"/api/keys/{made.json()['id']}/", {"allowed_models": ["demo", "other"]},
                        content_type="application/json")
    assert widened.status_code == 400 and ApiKey.objects.get(pk=made.json()["id"]).allowed_models == ["demo"]
    assert api.patch(f"/api/keys/{made.json()['id']}/", {"allowed_models": []}, content_type="application/json").status_code == 200


def test_the_keys_page_says_what_the_tenant_may_use_and_refuses_more(alice: Party) -> None:
    only(alice, "demo", "other")
    page = Client()
    page.force_login(alice.user)
    shown = page.get("/keys/").content.decode()
    assert "these models only" in shown and "demo, other" in shown
    refused = page.post("/keys/", {"name": "wide", "allowed_models": "demo, third"})
    assert refused.status_code == 200 and "third: not allowed" in refused.content.decode()
    assert not ApiKey.objects.filter(name="wide").exists()
    assert page.post("/keys/", {"name": "narrow", "allowed_models": "other"}).status_code == 200  # the key, shown once
    assert ApiKey.objects.get(name="narrow").allowed_models == ["other"]


def test_the_playground_offers_and_serves_only_the_tenants_models(alice: Party) -> None:
    only(alice, "other")
    page = Client()
    page.force_login(alice.user)
    shown = page.get("/playground/").content.decode()
    assert "<option>other</option>" in shown and "<option>demo</option>" not in shown
    refused = page.post("/playground/chat", json.dumps({"model": "demo", "messages": [{"role": "user", "content": "Hi"}]}),
                        content_type="application/json")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
