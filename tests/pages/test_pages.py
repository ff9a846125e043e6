"""The tenant pages: what members see and may do, and that bob never reaches alice's objects (404, not 403)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.cache import caches
from django.test import Client

from accounts.keys import KeyRejected, lookup
from accounts.models import ApiKey, Membership
from billing import rollups
from billing.models import Budget, UsageRecord

from ..conftest import Party
from ..factories import make_key, make_user

pytestmark = pytest.mark.django_db


def signed_in(party: Party) -> Client:
    client = Client()
    client.force_login(party.user)
    return client


def member(party: Party, username: str) -> Client:
    user = make_user(username, tenant=party.tenant, role=Membership.Role.MEMBER)
    client = Client()
    client.force_login(user)
    return client


def spend(party: Party, micros: int, *, model: str = "gpt-4o", at: datetime | None = None, **fields: object) -> UsageRecord:
    return UsageRecord.objects.create(tenant=party.tenant, key=party.key, endpoint="chat", public_model=model,
                                      end_reason=fields.pop("end_reason", "complete"), status_code=200, cost_picos=micros * 10**6,
                                      prompt_tokens=100, completion_tokens=50, latency_ms=120,
                                      created_at=at or datetime.now(UTC), **fields)


def test_pages_need_a_signed_in_member(client: Client, alice: Party) -> None:
    for path in ("/", "/keys/", "/budgets/", "/requests/", "/playground/", "/live/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next=")
    outsider = User.objects.create_user("nobody", password="pw-123456789")
    client.force_login(outsider)
    assert client.get("/").status_code == 403 and "not a member of any tenant" in client.get("/").content.decode()


def test_sign_in_and_out(client: Client, alice: Party) -> None:
    alice.user.set_password("correct horse battery")
    alice.user.save()
    assert client.get("/login/").status_code == 200
    wrong = client.post("/login/", {"username": "alice", "password": "nope"})
    assert wrong.status_code == 200 and "didn't match" in wrong.content.decode()
    right = client.post("/login/", {"username": "alice", "password": "correct horse battery"})
    assert right.status_code == 302 and right["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.post("/logout/").status_code == 302 and client.get("/").status_code == 302


def test_sign_in_is_rate_limited_per_account(client: Client, alice: Party) -> None:
    caches["limits"].clear()
    answers = [client.post("/login/", {"username": "alice", "password": f"guess-{i}"}).status_code for i in range(7)]
    assert answers[:5] == [200] * 5 and answers[5:] == [429, 429]
    assert "Too many attempts" in client.post("/login/", {"username": "alice", "password": "x"}).content.decode()


def test_password_change_and_reset_by_email(alice: Party) -> None:
    client = signed_in(alice)
    changed = client.post("/password/", {"old_password": "unknown", "new_password1": "a-new-long-pass-42",
                                         "new_password2": "a-new-long-pass-42"})
    assert changed.status_code == 200  # the old password is wrong (users from the factory have none usable)
    alice.user.email = "alice@example.com"
    alice.user.set_password("old-password-123")
    alice.user.save()
    client = signed_in(alice)
    ok = client.post("/password/", {"old_password": "old-password-123", "new_password1": "a-new-long-pass-42",
                                    "new_password2": "a-new-long-pass-42"})
    assert ok.status_code == 302 and ok["Location"] == "/password/done/"
    anonymous = Client()
    caches["limits"].clear()
    assert anonymous.post("/password/reset/", {"email": "alice@example.com"}).status_code == 302
    [email] = mail.outbox
    assert "/password/reset/" in email.body and email.to == ["alice@example.com"]
    link = next(line for line in email.body.splitlines() if "/password/reset/" in line).split("testserver")[1]
    form = anonymous.get(link, follow=True)
    assert "Set a new password" in form.content.decode()


def test_keys_page_creates_a_key_shown_once_and_rotates_and_revokes(alice: Party) -> None:
    client = signed_in(alice)
    assert "alice&#x27;s key" in client.get("/keys/").content.decode()
    created = client.post("/keys/", {"name": "backend", "expires_on": (datetime.now(UTC) + timedelta(days=30)).date(),
                                     "allowed_models": "demo, gpt-4o"})
    page = created.content.decode()
    secret = next(word for word in page.replace("<", " ").replace(">", " ").split() if word.startswith("tg-") and len(word) > 40)
    assert created["Cache-Control"] == "no-store" and "shown once" in page and "OpenAI(base_url=" in page
    key = ApiKey.objects.get(name="backend")
    assert lookup(secret).key_id == key.pk and key.allowed_models == ["demo", "gpt-4o"] and key.expires_at is not None
    assert secret not in client.get("/keys/").content.decode()  # never again
    rotated = client.post(f"/keys/{key.pk}/rotate/")
    new_secret = next(w for w in rotated.content.decode().replace("<", " ").replace(">", " ").split()
                      if w.startswith("tg-") and len(w) > 40)
    with pytest.raises(KeyRejected):
        lookup(secret)
    new_key = ApiKey.objects.get(pk=lookup(new_secret).key_id)
    assert client.post(f"/keys/{new_key.pk}/revoke/").status_code == 302
    with pytest.raises(KeyRejected):
        lookup(new_secret)
    bad = client.post("/keys/", {"name": "", "expires_on": "2000-01-01"})
    assert bad.status_code == 200 and "This field is required" in bad.content.decode()


def test_rotating_an_expired_key_on_the_keys_page_says_so_and_revokes_nothing(alice: Party) -> None:
    ApiKey.objects.filter(pk=alice.key.pk).update(expires_at=datetime.now(UTC) - timedelta(days=1))
    shown = signed_in(alice).post(f"/keys/{alice.key.pk}/rotate/", follow=True)
    assert shown.status_code == 200 and "has expired; issue a new key instead" in shown.content.decode()
    assert ApiKey.objects.get(pk=alice.key.pk).revoked_at is None
    assert ApiKey.objects.filter(tenant=alice.tenant).count() == 1


def test_bob_cannot_see_or_change_alices_keys(alice: Party, bob: Party) -> None:
    client = signed_in(bob)
    page = client.get("/keys/").content.decode()
    assert "alice" not in page and alice.key.prefix not in page
    assert client.post(f"/keys/{alice.key.pk}/revoke/").status_code == 404
    assert client.post(f"/keys/{alice.key.pk}/rotate/").status_code == 404
    assert ApiKey.objects.get(pk=alice.key.pk).revoked_at is None


def test_budgets_page_shows_spend_and_only_owners_change_alerts(alice: Party) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10.00"), period="month", name="Team")
    spend(alice, 2_500_000)
    page = signed_in(alice).get("/budgets/").content.decode()
    assert "Team" in page and "$2.50" in page and "$10.00" in page and "$7.50" in page
    owner = signed_in(alice)
    assert owner.post(f"/budgets/{budget.pk}/thresholds/", {f"b{budget.pk}-alert_thresholds": "25,90"}).status_code == 302
    assert Budget.objects.get(pk=budget.pk).alert_thresholds == "25,90"
    bad = owner.post(f"/budgets/{budget.pk}/thresholds/", {f"b{budget.pk}-alert_thresholds": "lots"})
    assert bad.status_code == 200 and "whole percentages" in bad.content.decode()
    assert owner.post("/budgets/contacts/", {"contact_emails": "ops@alice.example\nfin@alice.example"}).status_code == 302
    alice.tenant.refresh_from_db()
    assert alice.tenant.contact_email_list() == ["ops@alice.example", "fin@alice.example"]

    viewer = member(alice, "alice-member")
    page = viewer.get("/budgets/").content.decode()
    assert "25,90" in page and "Owners of" in page and 'name="b' not in page
    refused = viewer.post(f"/budgets/{budget.pk}/thresholds/", {f"b{budget.pk}-alert_thresholds": "1"})
    assert refused.status_code == 403 and Budget.objects.get(pk=budget.pk).alert_thresholds == "25,90"
    assert viewer.post("/budgets/contacts/", {"contact_emails": "x@y.example"}).status_code == 403


def test_bob_cannot_see_or_change_alices_budgets(alice: Party, bob: Party) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10.00"), period="month", name="Alice only")
    client = signed_in(bob)
    assert "Alice only" not in client.get("/budgets/").content.decode()
    assert client.post(f"/budgets/{budget.pk}/thresholds/", {f"b{budget.pk}-alert_thresholds": "1"}).status_code == 404
    assert client.get(f"/budgets/{budget.pk}/thresholds/").status_code == 404


def test_request_log_filters_and_pages_by_keyset(alice: Party, bob: Party) -> None:
    other, _ = make_key(alice.tenant, name="batch")
    base = datetime(2026, 11, 20, 12, tzinfo=UTC)
    for i in range(60):
        spend(alice, 1000 + i, at=base + timedelta(minutes=i), model="gpt-4o" if i % 2 else "claude")
    UsageRecord.objects.create(tenant=alice.tenant, key=other, endpoint="chat", public_model="gpt-4o", status_code=502,
                               end_reason="upstream_error", created_at=base)
    spend(bob, 5, model="bobs-secret-model")
    client = signed_in(alice)
    first = client.get("/requests/")
    assert len(first.context["rows"]) == 50 and first.context["older"] and "bobs-secret-model" not in first.content.decode()
    newest = first.context["rows"][0]["row"]
    assert newest.end_reason == "upstream_error"  # newest written first
    older = client.get("/requests/?" + first.context["older"])
    assert len(older.context["rows"]) == 11 and older.context["older"] is None
    assert {r["row"].pk for r in older.context["rows"]}.isdisjoint({r["row"].pk for r in first.context["rows"]})
    assert len(client.get("/requests/", {"model": "claude"}).context["rows"]) == 30
    assert [r["row"].key_id for r in client.get("/requests/", {"key": other.pk}).context["rows"]] == [other.pk]
    assert len(client.get("/requests/", {"end_reason": "upstream_error"}).context["rows"]) == 1
    assert len(client.get("/requests/", {"day_from": "2026-11-21"}).context["rows"]) == 0
    assert "No requests match" in client.get("/requests/", {"model": "nope"}).content.decode()
    # bob's key as a filter is not one of alice's choices: the form refuses it and shows nothing of bob's.
    assert "bobs-secret-model" not in client.get("/requests/", {"key": bob.key.pk}).content.decode()


def test_bob_sees_only_his_own_requests(alice: Party, bob: Party) -> None:
    spend(alice, 100, model="alices-model")
    page = signed_in(bob).get("/requests/").content.decode()
    assert "alices-model" not in page and "No requests yet" in page


def test_dashboard_shows_budgets_spend_tokens_errors_and_latency(alice: Party, bob: Party) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("5.00"), period="month", name="Monthly")
    now = datetime.now(UTC)
    spend(alice, 1_000_000, at=now)
    spend(alice, 250_000, model="claude", at=now)
    spend(alice, 0, end_reason="upstream_error", at=now)
    spend(bob, 9_000_000, model="bobs-model", at=now)
    rollups.roll_up()
    page = signed_in(alice).get("/").content.decode()
    assert "Monthly" in page and "$1.25" in page and "$5.00" in page
    assert "claude" in page and "gpt-4o" in page and "bobs-model" not in page and "$9.00" not in page
    assert "450" in page  # tokens: 3 rows x 150
    assert "33.3%" in page and "120 ms" in page
    assert 'aria-label="Spend per day, last 30 days"' in page
    empty = signed_in(bob)
    Budget.objects.filter(tenant=bob.tenant).delete()
    assert "No budgets" in empty.get("/").content.decode()


def test_a_member_of_two_tenants_switches_between_them(alice: Party, bob: Party) -> None:
    Membership.objects.create(tenant=bob.tenant, user=alice.user, role=Membership.Role.MEMBER)
    spend(bob, 100, model="bobs-model")
    client = signed_in(alice)
    assert "bobs-model" not in client.get("/requests/").content.decode()  # alice's tenant first (by name)
    assert client.post("/switch/", {"tenant": bob.tenant.slug}).status_code == 302
    assert "bobs-model" in client.get("/requests/").content.decode()
    stranger = signed_in(bob)
    assert stranger.post("/switch/", {"tenant": alice.tenant.slug}).status_code == 404  # not bob's to switch to


def test_dates_show_in_the_tenants_time_zone(alice: Party) -> None:
    alice.tenant.timezone = "Asia/Tokyo"
    alice.tenant.save()
    ApiKey.objects.filter(pk=alice.key.pk).update(created_at=datetime(2026, 11, 20, 23, 30, tzinfo=UTC))
    spend(alice, 100, at=datetime(2026, 11, 20, 23, 30, tzinfo=UTC))
    client = signed_in(alice)
    assert "2026-11-21 08:30" in client.get("/keys/").content.decode()
    assert "2026-11-21 08:30:00" in client.get("/requests/").content.decode()


def test_an_owner_changes_only_their_own_tenants_contacts(alice: Party, bob: Party) -> None:
    assert signed_in(bob).post("/budgets/contacts/", {"contact_emails": "bob@bob.example"}).status_code == 302
    alice.tenant.refresh_from_db()
    bob.tenant.refresh_from_db()
    assert alice.tenant.contact_email_list() == ["alice@example.com"] and bob.tenant.contact_email_list() == ["bob@bob.example"]
