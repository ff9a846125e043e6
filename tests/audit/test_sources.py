"""Each entry says where the change came from (admin, api, page, command), who made it and from which address."""

from __future__ import annotations

import csv
import io
import json

import pytest
from asgiref.sync import sync_to_async
from auditlog.models import LogEntry
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client, TestCase

from accounts.models import ApiKey, Tenant
from proxy.models import Provider

from ..api.conftest import token_client
from ..conftest import Party, make_party
from .helpers import last_for, source

pytestmark = pytest.mark.django_db


def test_admin_changes_name_the_operator_and_address(admin_client: Client, admin_user: User, alice: Party) -> None:
    response = admin_client.post("/admin/accounts/apikey/", {"action": "revoke_selected",
                                                             "_selected_action": [alice.key.pk]},
                                 REMOTE_ADDR="192.0.2.10", follow=True)
    assert response.status_code == 200
    entry = last_for(alice.key)
    assert source(entry) == "admin" and entry.actor == admin_user and entry.remote_addr == "192.0.2.10"
    assert "revoked_at" in entry.changes and entry.additional_data["verb"] == "revoke"


def test_admin_form_save_is_an_admin_update(admin_client: Client, admin_user: User, alice: Party) -> None:
    tenant = alice.tenant
    data = {
        "name": tenant.name, "slug": tenant.slug, "timezone": "UTC", "contact_emails": "ops@alice.example",
        "is_active": "on", "created_at_0": "2026-01-01", "created_at_1": "00:00:00", "requests_per_minute": "120",
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
        "budgets-TOTAL_FORMS": "0", "budgets-INITIAL_FORMS": "0",
        "api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0",
    }
    response = admin_client.post(f"/admin/accounts/tenant/{tenant.pk}/change/", data, REMOTE_ADDR="192.0.2.11")
    assert response.status_code == 302, response.content
    entry = last_for(tenant)
    assert entry.changes["requests_per_minute"] == ["None", "120"]
    assert source(entry) == "admin" and entry.actor == admin_user and entry.remote_addr == "192.0.2.11"


def test_api_changes_name_the_token_user(alice: Party) -> None:
    api = token_client(alice.user)
    created = api.post("/api/keys/", {"tenant": "alice", "name": "from-ci", "requests_per_minute": 30},
                       content_type="application/json", REMOTE_ADDR="198.51.100.7")
    assert created.status_code == 201
    key = ApiKey.objects.get(pk=created.json()["id"])
    entry = last_for(key)
    assert source(entry) == "api" and entry.actor == alice.user and entry.remote_addr == "198.51.100.7"
    assert api.post(f"/api/keys/{key.pk}/rotate/", REMOTE_ADDR="198.51.100.7").status_code == 201
    rotated = last_for(key)
    assert source(rotated) == "api" and rotated.additional_data["verb"] == "rotate" and rotated.actor == alice.user


def test_api_operator_changes_of_providers_and_tenant_limits(alice: Party) -> None:
    ops = token_client(User.objects.create_user("ops", is_staff=True, is_superuser=True))
    made = ops.post("/api/providers/", {"name": "up", "kind": "openai_compatible", "base_url": "http://127.0.0.1:9",
                                        "api_key": "sk-not-for-the-log"}, content_type="application/json")
    assert made.status_code == 201, made.content
    provider = Provider.objects.get(name="up")
    assert source(last_for(provider)) == "api" and last_for(provider).actor.username == "ops"
    assert "sk-not-for-the-log" not in str(list(LogEntry.objects.values_list("changes", flat=True)))
    limited = ops.patch(f"/api/tenants/{alice.tenant.slug}/", {"requests_per_minute": 10},
                        content_type="application/json")
    assert limited.status_code == 200, limited.content
    entry = last_for(Tenant.objects.get(pk=alice.tenant.pk))
    assert entry.changes == {"requests_per_minute": ["None", "10"]} and source(entry) == "api"


def test_tenant_page_changes_are_page_entries(alice: Party) -> None:
    client = Client(REMOTE_ADDR="203.0.113.5")
    client.force_login(alice.user)
    assert client.post("/keys/", {"name": "from-page"}).status_code == 200
    key = ApiKey.objects.get(name="from-page")
    entry = last_for(key)
    assert source(entry) == "page" and entry.actor == alice.user and entry.remote_addr == "203.0.113.5"
    assert client.post(f"/keys/{key.pk}/revoke/").status_code in (200, 302)
    revoked = last_for(key)
    assert source(revoked) == "page" and revoked.additional_data["verb"] == "revoke" and revoked.actor == alice.user


def test_commands_are_command_entries_without_actor_or_address() -> None:
    call_command("createtenant", "carol")
    tenant = Tenant.objects.get(slug="carol")
    call_command("issuekey", "carol", "--name", "batch")
    for entry in (last_for(tenant), last_for(ApiKey.objects.get(tenant=tenant))):
        assert source(entry) == "command" and entry.actor is None and entry.remote_addr is None


class AsgiSourceTests(TestCase):
    """Under ASGI the sync page runs in a thread; it still sees the request's source, actor and address."""

    async def test_page_change_over_asgi(self) -> None:
        alice = await sync_to_async(make_party)("alice")
        await self.async_client.aforce_login(alice.user)
        response = await self.async_client.post("/keys/", {"name": "asgi"})
        assert response.status_code == 200
        entry = await sync_to_async(lambda: last_for(ApiKey.objects.get(name="asgi")))()
        assert source(entry) == "page" and entry.actor_id == alice.user.pk and entry.remote_addr == "127.0.0.1"

    async def test_activity_exports_stream_over_asgi(self) -> None:
        alice = await sync_to_async(make_party)("alice")
        await self.async_client.aforce_login(alice.user)
        for path, parse in (("/activity/export.json", json.loads), ("/activity/export.csv", csv_rows)):
            response = await self.async_client.get(path)
            assert response.status_code == 200
            text = "".join([part.decode() if isinstance(part, bytes) else part
                            async for part in response.streaming_content])
            assert len(parse(text)) == await LogEntry.objects.filter(additional_data__tenant=alice.tenant.pk).acount()


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))
