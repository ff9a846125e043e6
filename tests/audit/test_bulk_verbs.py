"""Changes made with one UPDATE (no model signal) are recorded too: revoking management tokens in the admin, a key
added in the admin with rate limits, and the pepper rotation that revokes every key and token."""

from __future__ import annotations

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client
from pytest_django import Settings

from accounts import pepper, services
from accounts.models import ApiKey

from ..conftest import Party
from .helpers import last_for, source

pytestmark = pytest.mark.django_db


def test_admin_revokes_management_tokens_with_an_entry_each(admin_client: Client, admin_user: User) -> None:
    ops = User.objects.create_user("ops", is_staff=True)
    token, _ = services.issue_management_token(user=ops, name="ci")
    response = admin_client.post("/admin/accounts/managementtoken/", {"action": "revoke_selected",
                                                                      "_selected_action": [token.pk]},
                                 REMOTE_ADDR="192.0.2.20", follow=True)
    assert "Revoked 1 tokens." in response.content.decode()
    entry = last_for(token)
    assert entry.additional_data["verb"] == "revoke" and "revoked_at" in entry.changes
    assert source(entry) == "admin" and entry.actor == admin_user and entry.remote_addr == "192.0.2.20"
    token.refresh_from_db()
    assert not services.revoke_management_token(token=token)  # a second revocation changes nothing, records nothing
    assert LogEntry.objects.get_for_object(token).count() == 2


def test_admin_key_with_limits_records_them_on_creation(admin_client: Client, alice: Party) -> None:
    response = admin_client.post("/admin/accounts/apikey/add/", {
        "tenant": alice.tenant.pk, "name": "limited", "allowed_models": "[]", "expires_at_0": "", "expires_at_1": "",
        "requests_per_minute": "30", "max_concurrent": "2"}, follow=True)
    assert response.status_code == 200
    key = ApiKey.objects.get(name="limited")
    assert (key.requests_per_minute, key.max_concurrent) == (30, 2)
    created = last_for(key)
    assert created.action == LogEntry.Action.CREATE and source(created) == "admin"
    assert created.changes["requests_per_minute"] == ["None", "30"] and created.changes["max_concurrent"] == ["None", "2"]


def test_pepper_rotation_records_every_revocation(alice: Party, bob: Party, settings: Settings) -> None:
    token, _ = services.issue_management_token(user=alice.user, name="ci")
    services.revoke_key(key=bob.key)  # already revoked: not revoked again, not recorded again
    before = LogEntry.objects.get_for_object(bob.key).count()
    settings.TOLLGATE_KEY_PEPPER = "another-pepper"
    assert pepper.rotate() == (1, 1)
    for row in (alice.key, token):
        entry = last_for(row)
        assert entry.additional_data["verb"] == "rotate pepper" and source(entry) == "command"
        assert entry.changes["revoked_at"][0] == "None"
    assert last_for(alice.key).additional_data["tenant"] == alice.tenant.pk
    assert LogEntry.objects.get_for_object(bob.key).count() == before
