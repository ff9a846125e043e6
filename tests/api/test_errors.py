"""The management API never answers 500: each request a schema fuzz found failing is a 4xx in DRF's envelope."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError
from django.test import Client
from django.utils import timezone

from accounts.keys import KeyRejected, lookup
from accounts.models import ApiKey, Tenant
from billing.models import Price, UsageRecord
from gateway_site import api_errors
from proxy.models import Deployment, Provider

from ..conftest import Party
from ..factories import make_key, make_route, make_tenant
from .conftest import token_client

pytestmark = pytest.mark.django_db

JSON = "application/json"


def used(party: Party, price: Price | None = None) -> UsageRecord:
    """A ledger row of the party's key, as a request leaves it."""
    return UsageRecord.objects.create(tenant=party.tenant, key=party.key, endpoint="chat", public_model="gpt-4o",
                                      end_reason="complete", status_code=200, price=price)


def test_a_key_expiring_in_the_past_is_refused_when_created_or_changed(alice: Party) -> None:
    api = token_client(alice.user)
    past = "2000-01-01T00:00:00Z"
    created = api.post("/api/keys/", {"tenant": "alice", "name": "old", "expires_at": past}, content_type=JSON)
    assert created.status_code == 400 and "future" in created.json()["expires_at"][0]
    assert not ApiKey.objects.filter(name="old").exists()
    changed = api.patch(f"/api/keys/{alice.key.pk}/", {"expires_at": past}, content_type=JSON)
    assert changed.status_code == 400 and "future" in changed.json()["expires_at"][0]
    soon = (timezone.now() + timedelta(days=1)).isoformat()
    assert api.patch(f"/api/keys/{alice.key.pk}/", {"expires_at": soon}, content_type=JSON).status_code == 200


def test_an_expired_key_can_be_changed_as_it_is_but_not_rotated(alice: Party) -> None:
    api = token_client(alice.user)
    ApiKey.objects.filter(pk=alice.key.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    shown = api.get(f"/api/keys/{alice.key.pk}/").json()
    assert shown["status"] == "expired"
    assert api.put(f"/api/keys/{alice.key.pk}/", {**shown, "name": "renamed"}, content_type=JSON).status_code == 200
    rotated = api.post(f"/api/keys/{alice.key.pk}/rotate/")
    assert rotated.status_code == 400 and "has expired; issue a new key" in rotated.json()["detail"]
    assert ApiKey.objects.filter(tenant=alice.tenant).count() == 1
    assert ApiKey.objects.get(pk=alice.key.pk).revoked_at is None  # rotation rolled nothing half-way


def test_deleting_a_tenant_with_ledger_rows_is_a_conflict(alice: Party, operator: Client) -> None:
    used(alice)
    response = operator.delete("/api/tenants/alice/")
    assert response.status_code == 409
    assert response.json() == {"detail": "Still referenced by 1 usage records; deactivate the tenant instead "
                                         "(is_active: false)."}
    assert Tenant.objects.filter(slug="alice").exists()
    assert operator.patch("/api/tenants/alice/", {"is_active": False}, content_type=JSON).status_code == 200


def test_deleting_an_unused_tenant_works_and_its_keys_stop_at_once(operator: Client) -> None:
    carol = make_tenant("carol")
    _, secret = make_key(carol)
    assert lookup(secret).tenant_id == carol.pk  # now cached
    assert operator.delete("/api/tenants/carol/").status_code == 204
    with pytest.raises(KeyRejected):
        lookup(secret)


def test_deleting_a_provider_in_use_is_a_conflict(operator: Client) -> None:
    make_route("gpt-4o", upstream_model="gpt-4o", base_url="http://127.0.0.1:9/v1", provider_name="openai")
    provider = Provider.objects.get(name="openai")
    response = operator.delete(f"/api/providers/{provider.pk}/")
    assert response.status_code == 409 and "1 deployments" in response.json()["detail"]
    assert Provider.objects.filter(pk=provider.pk).exists() and Deployment.objects.count() == 1
    Deployment.objects.all().delete()
    assert operator.delete(f"/api/providers/{provider.pk}/").status_code == 204


def test_deleting_a_price_that_costed_requests_is_a_conflict(alice: Party, operator: Client) -> None:
    price = Price.objects.create(model="gpt-4o", input_per_million=1, output_per_million=2)
    used(alice, price)
    response = operator.delete(f"/api/prices/{price.pk}/")
    assert response.status_code == 409 and "add a price from a later day" in response.json()["detail"]
    assert Price.objects.filter(pk=price.pk).exists()


def test_a_second_price_for_the_same_model_and_day_is_refused(operator: Client) -> None:
    provider = Provider.objects.create(name="openai", kind="openai_compatible", preset="openai")
    body = {"model": "gpt-4o", "input_per_million": "2.50", "output_per_million": "10"}
    assert operator.post("/api/prices/", body, content_type=JSON).status_code == 201  # from today, the default
    again = operator.post("/api/prices/", {**body, "effective_from": date.today().isoformat()}, content_type=JSON)
    assert again.status_code == 400 and "already a price for this model from" in again.json()["effective_from"][0]
    assert operator.post("/api/prices/", body, content_type=JSON).status_code == 400
    for_provider = {**body, "provider": provider.pk}
    assert operator.post("/api/prices/", for_provider, content_type=JSON).status_code == 201  # another constraint
    twice = operator.post("/api/prices/", for_provider, content_type=JSON)
    assert twice.status_code == 400 and "model and provider" in twice.json()["effective_from"][0]
    tomorrow = operator.post("/api/prices/", {**body, "effective_from": str(date.today() + timedelta(days=1))},
                             content_type=JSON)
    assert tomorrow.status_code == 201
    moved = operator.patch(f"/api/prices/{tomorrow.json()['id']}/", {"effective_from": str(date.today())},
                           content_type=JSON)
    assert moved.status_code == 400 and Price.objects.count() == 3
    assert operator.patch(f"/api/prices/{tomorrow.json()['id']}/", {"note": "list price"},
                          content_type=JSON).status_code == 200  # its own day is no clash


def test_prices_are_not_negative(operator: Client) -> None:
    response = operator.post("/api/prices/", {"model": "m", "input_per_million": "-1", "output_per_million": "0"},
                             content_type=JSON)
    assert response.status_code == 400 and "input_per_million" in response.json()


def test_a_provider_follows_the_models_rules(operator: Client) -> None:
    bare = operator.post("/api/providers/", {"name": "bare", "kind": "openai_compatible"}, content_type=JSON)
    assert bare.status_code == 400 and "base_url" in bare.json()
    env = operator.post("/api/providers/", {"name": "env", "kind": "anthropic", "credential_env": "not a name"},
                        content_type=JSON)
    assert env.status_code == 400 and "credential_env" in env.json()
    made = operator.post("/api/providers/", {"name": "ok", "kind": "openai_compatible", "preset": "openai"},
                         content_type=JSON)
    assert made.status_code == 201
    bad = operator.patch(f"/api/providers/{made.json()['id']}/", {"preset": ""}, content_type=JSON)
    assert bad.status_code == 400 and Provider.objects.get(name="ok").preset == "openai"


def test_nul_bytes_and_lone_surrogates_are_refused_wherever_they_are(alice: Party, operator: Client) -> None:
    for path in ("/api/tenants/al%00ice/", "/api/tenants/alice%00/", "/api/tenants/a.b/"):
        for method in ("GET", "PATCH", "DELETE"):
            response = operator.generic(method, path, "{}", content_type=JSON)
            assert (response.status_code, response.json()) == (404, {"detail": "Not found."}), (method, path)
    for body in ('{"tenant": "alice", "name": "k", "allowed_models": ["gpt\\u0000"]}',
                 '{"tenant": "alice", "name": "\\ud800"}', '{"tenant": "alice", "na\\u0000me": "k"}',
                 '{"tenant": "alice", "\\udc00": "k"}'):
        response = operator.post("/api/keys/", body, content_type=JSON)
        assert response.status_code == 400 and "NUL character or a lone surrogate" in response.json()["detail"], body
    route = operator.post("/api/routes/", {"name": "r", "aliases": ["a\x00"]}, content_type=JSON)
    assert route.status_code == 400 and "aliases[0]" in route.json()["detail"]
    assert ApiKey.objects.count() == 1


def test_bodies_that_are_not_plain_json_are_refused(alice: Party) -> None:
    api = token_client(alice.user)
    deep = api.post("/api/keys/", "[" * 100_000 + "]" * 100_000, content_type=JSON)
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["detail"]
    form = api.post("/api/keys/", {"tenant": "alice", "name": "k"})  # multipart, as a form would send it
    assert form.status_code == 415 and "Unsupported media type" in form.json()["detail"]
    assert api.post("/api/keys/", "{", content_type=JSON).status_code == 400


@pytest.mark.parametrize("query", ["limit=100000000000000000000", "limit=1e20", "offset=100000000000000000000",
                                   "limit=9223372036854775807&offset=1", "limit=-1", "offset=-5"])
def test_huge_or_odd_pages_are_answered(alice: Party, query: str) -> None:
    response = token_client(alice.user).get(f"/api/keys/?{query}")
    assert response.status_code == 200 and response.json()["count"] == 1


def test_a_page_is_at_most_a_thousand_rows(alice: Party) -> None:
    ApiKey.objects.bulk_create(ApiKey(tenant=alice.tenant, name="k", prefix=f"p{i}", digest="x") for i in range(1001))
    page = token_client(alice.user).get("/api/keys/?limit=5000").json()
    assert page["count"] == 1002 and len(page["results"]) == 1000 and "offset=1000" in page["next"]


def test_unknown_paths_under_the_api_are_json(alice: Party) -> None:
    api = token_client(alice.user)
    for path in ("/api/nothing/", "/api/keys/abc/", "/api/keys/1/2/", "/api/keys/99999999999999999999/"):
        response = api.get(path)
        assert (response.status_code, response["Content-Type"]) == (404, JSON), path
        assert set(response.json()) == {"detail"}
    assert api.get("/api/keys")["Location"] == "/api/keys/"  # APPEND_SLASH still redirects
    session = Client(enforce_csrf_checks=True)
    session.force_login(alice.user)
    refused = session.post("/api/keys/0.5/rotate/")  # no view, so no CSRF check either
    assert (refused.status_code, refused.json()) == (404, {"detail": "Not found."})


def test_the_safety_net_turns_database_errors_into_api_errors() -> None:
    # What validation cannot see, such as a unique row another request inserted between the check and the insert.
    conflict = api_errors.exception_handler(IntegrityError("duplicate key value violates ... (secret)"), {})
    assert conflict is not None and conflict.status_code == 409 and "secret" not in json.dumps(conflict.data)
    data = api_errors.exception_handler(DataError("integer out of range"), {})
    assert data is not None and (data.status_code, data.data) == (400, {"detail": "A value is out of range or cannot "
                                                                                  "be stored."})
    invalid = api_errors.exception_handler(DjangoValidationError({"expires_at": "In the past."}), {})
    assert invalid is not None and (invalid.status_code, invalid.data) == (400, {"expires_at": ["In the past."]})
    assert api_errors.exception_handler(RuntimeError("a bug"), {}) is None  # a real bug stays a 500, and is logged
