"""Invitations through the admin and the management API, the invitation rate, and the members pages' access rules."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

from accounts import invitations
from accounts.models import Invitation, Membership

from ..conftest import Party
from ..factories import make_user
from .test_invitations import PASSWORD, emailed_link, invite, path_of, signed_in

pytestmark = pytest.mark.django_db


def test_an_operator_invites_from_the_admin_and_revokes(admin_client: Client, alice: Party) -> None:
    response = admin_client.post("/admin/accounts/invitation/add/",
                                 {"tenant": alice.tenant.pk, "email": "owner@example.com", "role": "owner"}, follow=True)
    assert response.status_code == 200
    invitation = Invitation.objects.get(email="owner@example.com")
    assert invitation.role == "owner" and invitation.invited_by is not None and invitation.invited_by.is_superuser
    assert emailed_link() == f"http://testserver{path_of(invitation)}"
    page = admin_client.get(f"/admin/accounts/invitation/{invitation.pk}/change/").content.decode()
    assert invitations.token_for(invitation) in page and "pending" in page
    listing = admin_client.get("/admin/accounts/invitation/")
    assert listing.status_code == 200 and "owner@example.com" in listing.content.decode()
    admin_client.post("/admin/accounts/invitation/", {"action": "revoke_selected", "_selected_action": [invitation.pk]})
    assert Invitation.objects.get(pk=invitation.pk).status() == "revoked"
    page = admin_client.get(f"/admin/accounts/invitation/{invitation.pk}/change/").content.decode()
    assert invitations.token_for(invitation) not in page
    assert admin_client.post(f"/admin/accounts/invitation/{invitation.pk}/delete/").status_code == 403


def test_the_admin_refuses_to_invite_a_member(admin_client: Client, alice: Party) -> None:
    alice.user.email = "alice@example.com"
    alice.user.save()
    response = admin_client.post("/admin/accounts/invitation/add/",
                                 {"tenant": alice.tenant.pk, "email": "ALICE@example.com", "role": "member"})
    assert response.status_code == 200 and "already a member" in response.content.decode()
    assert not Invitation.objects.exists() and not mail.outbox


def test_the_members_pages_need_a_signed_in_member(client: Client, alice: Party) -> None:
    for path in ("/members/", "/members/invite/", "/members/leave/"):
        response = client.post(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next=")
    assert 'href="/members/"' in signed_in(alice.user).get("/").content.decode()
    outsider = signed_in(make_user("nobody"))
    assert outsider.get("/members/").status_code == 403 and outsider.post("/members/leave/").status_code == 403


def test_an_address_too_long_for_a_username_is_told_to_use_sso(alice: Party) -> None:
    address = "a" * 60 + "@" + "b" * 60 + "." + "c" * 40 + ".com"
    invitation = invite(alice, address)
    response = Client().post(path_of(invitation), {"password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 400 and "longer than a username" in response.content.decode()
    assert not User.objects.filter(email=address).exists() and invitation.status() == "pending"


def test_invitations_per_tenant_are_rate_limited(alice: Party, bob: Party, monkeypatch: pytest.MonkeyPatch) -> None:
    from accounts import members

    monkeypatch.setattr(members, "INVITE_RATE", "2/h")
    client = signed_in(alice.user)
    answers = [client.post("/members/invite/", {"email": f"p{i}@example.com", "role": "member"}).status_code
               for i in range(3)]
    assert answers == [302, 302, 429] and len(mail.outbox) == 2
    assert signed_in(bob.user).post("/members/invite/", {"email": "q@example.com", "role": "member"}).status_code == 302


def test_owners_invite_and_revoke_through_the_api(alice: Party) -> None:
    from ..api.conftest import token_client

    api = token_client(alice.user)
    created = api.post("/api/invitations/", {"tenant": "alice", "email": "carol@example.com", "role": "owner"},
                       content_type="application/json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["tenant"], body["email"], body["role"], body["status"], body["invited_by"]) == (
        "alice", "carol@example.com", "owner", "pending", "alice")
    invitation = Invitation.objects.get(pk=body["id"])
    assert invitations.token_for(invitation) not in created.content.decode()  # the link goes by email only
    assert emailed_link() == f"http://testserver{path_of(invitation)}"
    assert [row["id"] for row in api.get("/api/invitations/").json()["results"]] == [invitation.pk]
    revoked = api.post(f"/api/invitations/{invitation.pk}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    again = api.post(f"/api/invitations/{invitation.pk}/revoke/")
    assert again.status_code == 409 and "withdrawn" in again.json()["detail"]
    assert api.delete(f"/api/invitations/{invitation.pk}/").status_code == 405
    alice.user.email = "alice@example.com"
    alice.user.save()
    for data in ({"tenant": "alice", "email": "ALICE@example.com", "role": "member"},
                 {"tenant": "alice", "email": "nope", "role": "member"},
                 {"tenant": "alice", "email": "x@example.com", "role": "admin"},
                 {"tenant": "alice", "email": ["x@example.com"], "role": "member"}):
        assert api.post("/api/invitations/", data, content_type="application/json").status_code == 400


def test_bob_cannot_see_revoke_or_invite_into_alices_tenant_through_the_api(alice: Party, bob: Party) -> None:
    from ..api.conftest import token_client

    invitation = invite(alice)
    api = token_client(bob.user)
    assert api.get("/api/invitations/").json()["results"] == []
    assert api.get(f"/api/invitations/{invitation.pk}/").status_code == 404
    assert api.post(f"/api/invitations/{invitation.pk}/revoke/").status_code == 404
    refused = api.post("/api/invitations/", {"tenant": "alice", "email": "eve@example.com", "role": "owner"},
                       content_type="application/json")
    assert refused.status_code == 400 and "tenant" in refused.json()
    member = token_client(make_user("mallory", tenant=alice.tenant, role=Membership.Role.MEMBER))
    assert member.get("/api/invitations/").json()["results"] == []
    assert member.post("/api/invitations/", {"tenant": "alice", "email": "eve@example.com", "role": "owner"},
                       content_type="application/json").status_code == 400
    assert invitation.status() == "pending" and Invitation.objects.count() == 1 and len(mail.outbox) == 1


def test_the_api_and_the_page_share_the_invitation_rate(alice: Party, monkeypatch: pytest.MonkeyPatch) -> None:
    from accounts import members

    from ..api.conftest import token_client

    monkeypatch.setattr(members, "INVITE_RATE", "2/h")
    assert signed_in(alice.user).post("/members/invite/", {"email": "p@example.com", "role": "member"}).status_code == 302
    api = token_client(alice.user)
    answers = [api.post("/api/invitations/", {"tenant": "alice", "email": f"q{i}@example.com", "role": "member"},
                        content_type="application/json").status_code for i in range(2)]
    assert answers == [201, 429] and len(mail.outbox) == 2
