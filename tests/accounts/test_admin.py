from __future__ import annotations

import re

import pytest
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.db import connection

from accounts import pepper
from accounts.keys import KeyRejected, lookup
from accounts.models import ApiKey, KeyPepper, Tenant
from proxy.models import ModelRoute
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..factories import make_key, make_route

KEY_RE = re.compile(r"tg-[0-9a-f]{12}-[A-Za-z0-9]{40}")


def shown_keys(response) -> list[str]:
    return KEY_RE.findall(response.content.decode())


def test_adding_a_key_shows_the_plaintext_once(admin_client: Client, alice: Party) -> None:
    ensure_demo_route()
    response = admin_client.post(
        "/admin/accounts/apikey/add/",
        {"tenant": alice.tenant.pk, "name": "ci pipeline", "allowed_models": '["demo"]', "expires_at_0": "", "expires_at_1": ""},
        follow=True,
    )
    assert response.status_code == 200
    [secret] = shown_keys(response)
    caller = lookup(secret)
    assert caller.tenant_id == alice.tenant.pk and caller.allowed_models == ("demo",)
    key = ApiKey.objects.get(pk=caller.key_id)
    assert key.created_by is not None and key.created_by.is_superuser
    again = admin_client.get(f"/admin/accounts/apikey/{key.pk}/change/")
    assert shown_keys(again) == []
    assert key.digest not in again.content.decode()
    assert key.prefix in again.content.decode()


def test_adding_a_key_inline_on_the_tenant_shows_it_once(admin_client: Client, alice: Party) -> None:
    tenant = alice.tenant
    data = {
        "name": tenant.name, "slug": tenant.slug, "timezone": "Europe/Berlin", "contact_emails": "ops@alice.example",
        "is_active": "on", "created_at_0": "2026-01-01", "created_at_1": "00:00:00",
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
        "budgets-TOTAL_FORMS": "0", "budgets-INITIAL_FORMS": "0",
        "api_keys-TOTAL_FORMS": "2", "api_keys-INITIAL_FORMS": "1",
        "api_keys-0-id": alice.key.pk, "api_keys-0-tenant": tenant.pk, "api_keys-0-name": "renamed",
        "api_keys-0-allowed_models": "[]", "api_keys-0-expires_at_0": "", "api_keys-0-expires_at_1": "",
        "api_keys-1-tenant": tenant.pk, "api_keys-1-name": "inline key", "api_keys-1-allowed_models": "[]",
        "api_keys-1-expires_at_0": "", "api_keys-1-expires_at_1": "",
    }
    response = admin_client.post(f"/admin/accounts/tenant/{tenant.pk}/change/", data, follow=True)
    assert response.status_code == 200, response.content
    [secret] = shown_keys(response)
    assert ApiKey.objects.get(pk=lookup(secret).key_id).name == "inline key"
    assert ApiKey.objects.get(pk=alice.key.pk).name == "renamed"
    assert Tenant.objects.get(pk=tenant.pk).timezone == "Europe/Berlin"


def test_revoke_action(admin_client: Client, alice: Party, bob: Party) -> None:
    lookup(alice.secret)
    response = admin_client.post(
        "/admin/accounts/apikey/", {"action": "revoke_selected", "_selected_action": [alice.key.pk]}, follow=True
    )
    assert "Revoked 1 key(s)." in response.content.decode()
    with pytest.raises(KeyRejected):
        lookup(alice.secret)
    assert lookup(bob.secret).tenant_id == bob.tenant.pk


def test_rotate_action_shows_each_new_key_once(admin_client: Client, alice: Party, bob: Party) -> None:
    response = admin_client.post(
        "/admin/accounts/apikey/",
        {"action": "rotate_selected", "_selected_action": [alice.key.pk, bob.key.pk]},
        follow=True,
    )
    new_secrets = shown_keys(response)
    assert len(new_secrets) == 2
    assert {lookup(s).tenant_id for s in new_secrets} == {alice.tenant.pk, bob.tenant.pk}
    for old in (alice.secret, bob.secret):
        with pytest.raises(KeyRejected):
            lookup(old)


def test_search_by_prefix_and_by_pasted_key(admin_client: Client, alice: Party, bob: Party) -> None:
    for term in (alice.key.prefix, alice.secret):
        page = admin_client.get("/admin/accounts/apikey/", {"q": term}).content.decode()
        assert alice.key.masked in page and bob.key.masked not in page


def test_keys_cannot_be_deleted_only_revoked(admin_client: Client, alice: Party) -> None:
    assert admin_client.get(f"/admin/accounts/apikey/{alice.key.pk}/delete/").status_code == 403


def test_key_changelist_query_count_does_not_grow_with_10000_keys(admin_client: Client, alice: Party, bob: Party) -> None:
    def changelist_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get("/admin/accounts/apikey/").status_code == 200
        return len(queries)

    few = changelist_queries()
    tenants = [alice.tenant, bob.tenant]
    ApiKey.objects.bulk_create(
        ApiKey(tenant=tenants[i % 2], name=f"bulk {i}", prefix=f"{i:012x}", digest="0" * 64) for i in range(10_000)
    )
    # session + user, the page count, the page of rows joined to tenants: no query per row
    assert changelist_queries() == few <= 5
    page = admin_client.get("/admin/accounts/apikey/", {"status": "active", "q": "alice"})
    assert page.status_code == 200 and "bulk 9998" in page.content.decode()


def test_admin_is_branded_and_static_files_are_found(admin_client: Client) -> None:
    from django.contrib.staticfiles import finders

    page = admin_client.get("/admin/").content.decode()
    assert "LLM gateway operations" in page and "tollgate/admin.css" in page
    assert finders.find("tollgate/admin.css")


def key_form(tenant: Tenant, models: str, **fields: str) -> dict[str, object]:
    return {"tenant": tenant.pk, "name": "ci", "allowed_models": models, "expires_at_0": "", "expires_at_1": "", **fields}


def tenant_form(tenant: Tenant, **fields: object) -> dict[str, object]:
    return {
        "name": tenant.name, "slug": tenant.slug, "timezone": tenant.timezone, "contact_emails": tenant.contact_emails,
        "is_active": "on", "allowed_models": "", "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
        "budgets-TOTAL_FORMS": "0", "budgets-INITIAL_FORMS": "0", "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0", **fields,
    }


@pytest.fixture
def routes(db: None) -> None:
    make_route("gpt-4o", upstream_model="gpt-4o", aliases=["default"])
    ensure_demo_route()


def test_a_keys_allowed_models_are_a_comma_or_newline_list(admin_client: Client, alice: Party, routes: None) -> None:
    form = admin_client.get("/admin/accounts/apikey/add/").content.decode()
    assert "separated by commas or on separate lines" in form and "Routed models: demo, gpt-4o." in form
    for typed in ("gpt-4o, demo", "gpt-4o\r\ndemo\r\n", " gpt-4o ,, demo, gpt-4o", '["gpt-4o", "demo"]'):
        response = admin_client.post("/admin/accounts/apikey/add/", key_form(alice.tenant, typed), follow=True)
        [secret] = shown_keys(response)
        assert lookup(secret).allowed_models == ("gpt-4o", "demo"), typed
    key = ApiKey.objects.get(pk=lookup(secret).key_id)
    page = admin_client.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode()
    assert "gpt-4o, demo</textarea>" in page and "[&quot;" not in page
    assert admin_client.post("/admin/accounts/apikey/add/", key_form(alice.tenant, "")).status_code == 302
    assert ApiKey.objects.filter(tenant=alice.tenant).latest("created_at").allowed_models == []


@pytest.mark.parametrize(("typed", "error"), [
    ("gpt-5", "Not a routed model: gpt-5."),
    ("demo, gpt-5, o3", "Not a routed model: gpt-5, o3."),
    ('[""]', "Every model name must be a non-empty string."),
    ('["demo", 4]', "Every model name must be a non-empty string."),
    ('{"model": "demo"}', 'Not a routed model: {&quot;model&quot;: &quot;demo&quot;}.'),
    ("[demo", "Write model names separated by commas or on separate lines."),
])
def test_unknown_or_empty_model_names_are_form_errors(
    admin_client: Client, alice: Party, routes: None, typed: str, error: str
) -> None:
    before = ApiKey.objects.count()
    response = admin_client.post("/admin/accounts/apikey/add/", key_form(alice.tenant, typed))
    assert response.status_code == 200 and error in response.content.decode()
    assert ApiKey.objects.count() == before and shown_keys(response) == []
    tenant = admin_client.post(f"/admin/accounts/tenant/{alice.tenant.pk}/change/",
                               tenant_form(alice.tenant, allowed_models=typed))
    assert tenant.status_code == 200 and error in tenant.content.decode()
    assert Tenant.objects.get(pk=alice.tenant.pk).allowed_models == []


def test_a_key_expiring_in_the_past_is_a_form_error(admin_client: Client, alice: Party) -> None:
    before = ApiKey.objects.count()
    response = admin_client.post("/admin/accounts/apikey/add/",
                                 key_form(alice.tenant, "", expires_at_0="2020-01-01", expires_at_1="00:00:00"))
    assert response.status_code == 200 and "The expiry time must be in the future." in response.content.decode()
    assert ApiKey.objects.count() == before


def test_operators_set_a_tenants_allowed_models(admin_client: Client, alice: Party, bob: Party, routes: None) -> None:
    page = admin_client.get(f"/admin/accounts/tenant/{alice.tenant.pk}/change/").content.decode()
    assert "Models this tenant may call" in page and 'name="allowed_models"' in page
    from accounts import keys

    lookup(alice.secret)
    assert alice.key.prefix in keys._local  # cached with the tenant's state
    response = admin_client.post(f"/admin/accounts/tenant/{alice.tenant.pk}/change/",
                                 tenant_form(alice.tenant, allowed_models="demo\ngpt-4o"))
    assert response.status_code == 302, response.content
    assert Tenant.objects.get(pk=alice.tenant.pk).allowed_models == ["demo", "gpt-4o"]
    assert Tenant.objects.get(pk=bob.tenant.pk).allowed_models == []
    assert alice.key.prefix not in keys._local  # the cached lookup is dropped, so the new list applies at once
    page = admin_client.get(f"/admin/accounts/tenant/{alice.tenant.pk}/change/").content.decode()
    assert "demo, gpt-4o</textarea>" in page
    admin_client.post(f"/admin/accounts/tenant/{alice.tenant.pk}/change/", tenant_form(alice.tenant))
    assert Tenant.objects.get(pk=alice.tenant.pk).allowed_models == []


def test_a_key_can_only_narrow_its_tenants_models(admin_client: Client, alice: Party, bob: Party, routes: None) -> None:
    Tenant.objects.filter(pk=alice.tenant.pk).update(allowed_models=["gpt-4o"])
    refused = admin_client.post("/admin/accounts/apikey/add/", key_form(alice.tenant, "demo"))
    assert refused.status_code == 200
    assert "demo: not allowed for tenant alice, which may use only gpt-4o." in refused.content.decode()
    # An alias of a model the tenant may call is within it; bob's tenant has no list.
    assert admin_client.post("/admin/accounts/apikey/add/", key_form(alice.tenant, "default")).status_code == 302
    assert admin_client.post("/admin/accounts/apikey/add/", key_form(bob.tenant, "demo")).status_code == 302
    # On the tenant page, a new key is checked against the list saved in the same form.
    inline = tenant_form(alice.tenant, allowed_models="demo", **{
        "api_keys-TOTAL_FORMS": "1", "api_keys-0-tenant": alice.tenant.pk, "api_keys-0-name": "inline",
        "api_keys-0-allowed_models": "gpt-4o", "api_keys-0-expires_at_0": "", "api_keys-0-expires_at_1": ""})
    response = admin_client.post(f"/admin/accounts/tenant/{alice.tenant.pk}/change/", inline)
    assert response.status_code == 200 and "gpt-4o: not allowed for tenant alice" in response.content.decode()
    assert not ApiKey.objects.filter(name="inline").exists()


def test_names_saved_before_their_route_went_away_do_not_block_other_changes(
    admin_client: Client, alice: Party, routes: None
) -> None:
    key, _ = make_key(alice.tenant, name="old", allowed_models=["demo", "retired-model"])
    ModelRoute.objects.filter(name="demo").delete()
    response = admin_client.post(f"/admin/accounts/apikey/{key.pk}/change/", {
        "name": "renamed", "allowed_models": "demo, retired-model", "expires_at_0": "", "expires_at_1": "",
        "budgets-TOTAL_FORMS": "0", "budgets-INITIAL_FORMS": "0"})
    assert response.status_code == 302, response.content
    key.refresh_from_db()
    assert (key.name, key.allowed_models) == ("renamed", ["demo", "retired-model"])


def test_a_key_under_another_pepper_is_a_form_error(admin_client: Client, alice: Party) -> None:
    KeyPepper.objects.all().delete()
    KeyPepper.objects.create(fingerprint=pepper.fingerprint("the server's other pepper"))
    before = ApiKey.objects.count()
    response = admin_client.post("/admin/accounts/apikey/add/", key_form(alice.tenant, ""))
    assert response.status_code == 200 and "is not the pepper" in response.content.decode()
    inline = tenant_form(alice.tenant, **{
        "api_keys-TOTAL_FORMS": "1", "api_keys-0-tenant": alice.tenant.pk, "api_keys-0-name": "inline",
        "api_keys-0-allowed_models": "", "api_keys-0-expires_at_0": "", "api_keys-0-expires_at_1": ""})
    response = admin_client.post(f"/admin/accounts/tenant/{alice.tenant.pk}/change/", inline)
    assert response.status_code == 200 and "is not the pepper" in response.content.decode()
    assert ApiKey.objects.count() == before
    # Changing a key issued before needs no pepper.
    response = admin_client.post(f"/admin/accounts/apikey/{alice.key.pk}/change/", {
        "name": "renamed", "allowed_models": "", "expires_at_0": "", "expires_at_1": "",
        "budgets-TOTAL_FORMS": "0", "budgets-INITIAL_FORMS": "0"})
    assert response.status_code == 302


def test_operators_send_a_test_alert_from_the_tenant_list(admin_client: Client, alice: Party, bob: Party) -> None:
    from django.core import mail

    page = admin_client.get("/admin/accounts/tenant/")
    assert b'value="send_test_alert"' in page.content
    response = admin_client.post("/admin/accounts/tenant/", {"action": "send_test_alert",
                                                             "_selected_action": [alice.tenant.pk]}, follow=True)
    assert response.status_code == 200
    [email] = mail.outbox
    assert email.to == ["alice@example.com"] and "TEST" in email.subject  # bob's contacts got nothing
    assert "Test alert for Alice: emailed to alice@example.com" in response.content.decode()
