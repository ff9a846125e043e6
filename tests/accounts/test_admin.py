from __future__ import annotations

import re

import pytest
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.db import connection

from accounts.keys import KeyRejected, lookup
from accounts.models import ApiKey, Tenant

from ..conftest import Party

KEY_RE = re.compile(r"tg-[0-9a-f]{12}-[A-Za-z0-9]{40}")


def shown_keys(response) -> list[str]:
    return KEY_RE.findall(response.content.decode())


def test_adding_a_key_shows_the_plaintext_once(admin_client: Client, alice: Party) -> None:
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
