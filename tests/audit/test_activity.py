"""The Activity page: a tenant's owners see their tenant's changes (and download them), nobody else's."""

from __future__ import annotations

import csv
import io
import json

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client

from accounts import services
from accounts.models import Membership

from ..conftest import Party
from ..factories import make_key, make_user

pytestmark = pytest.mark.django_db


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def body(response: object) -> str:
    return b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]


def test_owner_sees_own_changes_and_bob_sees_none_of_alices(alice: Party, bob: Party) -> None:
    make_key(alice.tenant, name="alice-secret-project")
    make_key(bob.tenant, name="bob-only-key")
    page = signed_in(alice.user).get("/activity/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "alice-secret-project" in text and "bob-only-key" not in text and "Download CSV" in text
    assert "API key" in text and "accounts.apikey" not in text
    bobs = signed_in(bob.user)
    for path in ("/activity/", "/activity/export.csv", "/activity/export.json"):
        response = bobs.get(path)
        content = response.content.decode() if not response.streaming else body(response)
        assert response.status_code == 200 and "alice" not in content.lower()


def test_exports_parse_and_hold_only_the_tenants_entries(alice: Party, bob: Party) -> None:
    key, _ = make_key(alice.tenant, name="exported")
    services.revoke_key(key=key)
    client = signed_in(alice.user)
    response = client.get("/activity/export.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert rows and all(row["tenant"] == str(alice.tenant.pk) for row in rows)
    revoked = next(row for row in rows if row["verb"] == "revoke")
    assert revoked["object"].startswith("exported") and "revoked_at" in json.loads(revoked["changes"])
    data = json.loads(body(client.get("/activity/export.json")))
    assert len(data) == len(rows) and {item["tenant"] for item in data} == {alice.tenant.pk}
    assert {"time", "action", "model", "actor", "source", "remote_addr", "changes"} <= set(data[0])
    total = LogEntry.objects.filter(additional_data__tenant=alice.tenant.pk).count()
    assert len(data) == total and total < LogEntry.objects.count()  # bob's entries exist and are left out


def test_members_who_are_not_owners_are_refused(alice: Party) -> None:
    member = signed_in(make_user("mallory", tenant=alice.tenant, role=Membership.Role.MEMBER))
    for path in ("/activity/", "/activity/export.csv", "/activity/export.json"):
        response = member.get(path)
        assert response.status_code == 403 and "Only owners" in response.content.decode()
    assert Client().get("/activity/").status_code == 302  # signed out: to the sign-in page


def test_operator_changes_show_without_the_operators_name_or_address(alice: Party, admin_client: Client) -> None:
    admin_client.post("/admin/accounts/apikey/", {"action": "revoke_selected", "_selected_action": [alice.key.pk]},
                      REMOTE_ADDR="192.0.2.99")
    client = signed_in(alice.user)
    text = client.get("/activity/").content.decode()
    assert "operator" in text and "192.0.2.99" not in text
    data = json.loads(body(client.get("/activity/export.json")))
    revoked = next(item for item in data if item["verb"] == "revoke")
    assert revoked["actor"] == "operator" and revoked["remote_addr"] is None and revoked["source"] == "admin"


def test_pages_by_keyset_and_bad_cursor_is_a_400(alice: Party) -> None:
    for n in range(55):
        make_key(alice.tenant, name=f"k{n}")
    client = signed_in(alice.user)
    first = client.get("/activity/")
    older = first.context["older"]
    assert older and len(first.context["rows"]) == 50
    second = client.get(f"/activity/?before={older}")
    assert second.status_code == 200 and second.context["rows"] and "Newest" in second.content.decode()
    assert {r["object"] for r in first.context["rows"]}.isdisjoint({r["object"] for r in second.context["rows"]})
    assert client.get("/activity/?before=abc").status_code == 400
    assert client.get("/activity/?before=-1").status_code == 400
    assert client.get(f"/activity/?before={2**64}").status_code == 400  # past a bigint: refused, not a 500


def test_nav_link_only_for_owners(alice: Party) -> None:
    assert 'href="/activity/"' in signed_in(alice.user).get("/keys/").content.decode()
    member = signed_in(make_user("mallory", tenant=alice.tenant, role=Membership.Role.MEMBER))
    assert 'href="/activity/"' not in member.get("/keys/").content.decode()


def test_a_former_members_changes_still_name_them(alice: Party) -> None:
    dave = make_user("dave", tenant=alice.tenant, role=Membership.Role.OWNER)
    signed_in(dave).post("/keys/", {"name": "daves-key"}, REMOTE_ADDR="203.0.113.77")
    Membership.objects.filter(user=dave).delete()
    data = json.loads(body(signed_in(alice.user).get("/activity/export.json")))
    made = next(item for item in data if item["object"].startswith("daves-key") and item["action"] == "create")
    assert made["actor"] == "dave" and made["remote_addr"] == "203.0.113.77" and made["source"] == "page"
