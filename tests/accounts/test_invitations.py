"""Invitations and members: the signed link, joining as a new or an existing user, owners' changes, the last owner."""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from accounts import invitations
from accounts.models import Invitation, Membership, Project, Tenant

from ..conftest import Party
from ..factories import make_user

pytestmark = pytest.mark.django_db

LINK = re.compile(r"https?://\S+/invite/\S+/")
PASSWORD = "a-long-new-password-42"


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def invite(party: Party, email: str = "carol@example.com", role: str = Membership.Role.MEMBER, **kw: object) -> Invitation:
    return invitations.invite(tenant=party.tenant, email=email, role=role, invited_by=party.user,
                              **kw)  # type: ignore[arg-type]


def path_of(invitation: Invitation) -> str:
    return f"/invite/{invitations.token_for(invitation)}/"


def emailed_link() -> str:
    [message] = mail.outbox
    [link] = LINK.findall(message.body)
    return link


def test_an_owner_invites_by_email_with_a_working_link(alice: Party) -> None:
    client = signed_in(alice.user)
    response = client.post("/members/invite/", {"email": "carol@example.com", "role": "member"})
    assert response.status_code == 302 and response["Location"] == "/members/"
    [message] = mail.outbox
    assert message.to == ["carol@example.com"] and "Alice" in message.subject
    assert "alice invited you to join Alice on Tollgate, as a member." in message.body
    assert "The link works once, for 7 days." in message.body
    link = emailed_link()
    assert link.startswith("http://testserver/invite/")  # absolute, from the request's host
    invitation = Invitation.objects.get(tenant=alice.tenant)
    assert (invitation.email, invitation.role, invitation.invited_by) == ("carol@example.com", "member", alice.user)
    assert invitation.expires_at - invitation.created_at == timedelta(days=7)
    page = Client().get(link.removeprefix("http://testserver"))
    assert page.status_code == 200 and "Join Alice" in page.content.decode()
    assert page["Cache-Control"] == "no-store"
    assert "carol@example.com" in signed_in(alice.user).get("/members/").content.decode()


def test_a_link_without_a_request_uses_the_public_url(alice: Party, settings: object) -> None:
    settings.TOLLGATE_PUBLIC_URL = "https://gateway.example.com"  # type: ignore[attr-defined]
    invitation = invite(alice)
    assert emailed_link() == f"https://gateway.example.com{path_of(invitation)}"


def test_the_link_is_the_same_each_time_and_names_no_secret(alice: Party) -> None:
    invitation = invite(alice)
    assert invitations.token_for(invitation) == invitations.token_for(Invitation.objects.get(pk=invitation.pk))
    assert invitations.invitation_from(invitations.token_for(invitation)) == invitation


def test_a_new_invitee_sets_a_password_and_lands_on_the_tenant_as_a_member(alice: Party) -> None:
    invitation = invite(alice, "Carol@Example.com")
    client = Client()
    form = client.get(path_of(invitation))
    assert "Create account and join" in form.content.decode()
    mismatch = client.post(path_of(invitation), {"name": "Carol", "password1": PASSWORD, "password2": "other"})
    assert mismatch.status_code == 400 and not User.objects.filter(email__iexact="carol@example.com").exists()
    weak = client.post(path_of(invitation), {"name": "Carol", "password1": "carol", "password2": "carol"})
    assert weak.status_code == 400 and "too short" in weak.content.decode()
    joined = client.post(path_of(invitation), {"name": "Carol", "password1": PASSWORD, "password2": PASSWORD})
    assert joined.status_code == 302 and joined["Location"] == "/"
    carol = User.objects.get(username="Carol@Example.com")
    assert carol.email == "Carol@Example.com" and carol.first_name == "Carol" and carol.check_password(PASSWORD)
    assert Membership.objects.get(tenant=alice.tenant, user=carol).role == Membership.Role.MEMBER
    dashboard = client.get("/")
    assert dashboard.status_code == 200 and "Member" in dashboard.content.decode()
    invitation.refresh_from_db()
    assert invitation.status() == "accepted" and invitation.accepted_by == carol
    fresh = Client()
    assert fresh.post("/login/", {"username": "Carol@Example.com", "password": PASSWORD}).status_code == 302


def test_an_existing_user_signs_in_first_then_accepts_as_owner(alice: Party) -> None:
    dave = make_user("dave", email="dave@example.com")
    invitation = invite(alice, "DAVE@example.com", Membership.Role.OWNER)
    anonymous = Client().get(path_of(invitation))
    body = anonymous.content.decode()
    assert anonymous.status_code == 200 and f'href="/login/?next={path_of(invitation)}"' in body
    assert "Create account" not in body
    assert Client().post(path_of(invitation), {"password1": PASSWORD, "password2": PASSWORD}).status_code == 200
    assert not Membership.objects.filter(user=dave).exists()
    client = signed_in(dave)
    assert "Accept and join" in client.get(path_of(invitation)).content.decode()
    assert client.post(path_of(invitation)).status_code == 302
    assert Membership.objects.get(tenant=alice.tenant, user=dave).role == Membership.Role.OWNER
    assert "Alice" in client.get("/").content.decode()


def test_with_password_sign_in_off_a_new_invitee_signs_in_with_sso(alice: Party, settings: object) -> None:
    settings.TOLLGATE_OIDC_ISSUER = "https://sso.example.com"  # type: ignore[attr-defined]
    settings.TOLLGATE_OIDC_PROVIDER_NAME = "Acme SSO"  # type: ignore[attr-defined]
    settings.TOLLGATE_PASSWORD_LOGIN = False  # type: ignore[attr-defined]
    invitation = invite(alice)
    body = Client().get(path_of(invitation)).content.decode()
    assert f'href="/oidc/authenticate/?next={path_of(invitation).replace(":", "%3A")}">Sign in with Acme SSO' in body
    assert "password1" not in body and "Sign in to accept" not in body
    assert Client().post(path_of(invitation), {"password1": PASSWORD, "password2": PASSWORD}).status_code == 200
    assert not User.objects.filter(email="carol@example.com").exists()


def test_with_sso_on_a_new_invitee_may_set_a_password_or_use_sso(alice: Party, settings: object) -> None:
    settings.TOLLGATE_OIDC_ISSUER = "https://sso.example.com"  # type: ignore[attr-defined]
    settings.TOLLGATE_OIDC_PROVIDER_NAME = "Acme SSO"  # type: ignore[attr-defined]
    body = Client().get(path_of(invite(alice))).content.decode()
    assert "Create account and join" in body and "sign in with Acme SSO" in body


def test_an_account_of_another_address_cannot_accept(alice: Party, bob: Party) -> None:
    invitation = invite(alice)
    for user in (bob.user, make_user("eve", email="eve@example.com")):  # bob's owner has no email; eve another one
        client = signed_in(user)
        for response in (client.get(path_of(invitation)), client.post(path_of(invitation))):
            assert response.status_code == 403 and "This invitation is for carol@example.com" in response.content.decode()
        with pytest.raises(invitations.WrongAccount):
            invitations.accept(invitation=invitation, user=user)
    assert not Membership.objects.filter(tenant=alice.tenant).exclude(user=alice.user).exists()
    assert Invitation.objects.get(pk=invitation.pk).status() == "pending"


def tampered(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@pytest.mark.parametrize("case", ["tampered", "garbage", "other_salt", "deleted", "expired_link", "expired_row",
                                  "revoked", "accepted", "inactive_tenant"])
def test_unusable_links_get_a_clear_4xx(alice: Party, case: str) -> None:
    from django.core import signing

    now = timezone.now()
    invitation = invite(alice, now=now - timedelta(days=8) if case == "expired_link" else None)
    token = invitations.token_for(invitation)
    if case == "tampered":
        token = tampered(token)
    elif case == "garbage":
        token = "nonsense:abc"
    elif case == "other_salt":
        token = signing.TimestampSigner().sign(str(invitation.pk))  # e.g. a signature made for something else
    elif case == "deleted":
        invitation.delete()
    elif case == "expired_row":
        Invitation.objects.filter(pk=invitation.pk).update(expires_at=now - timedelta(seconds=1))
    elif case == "revoked":
        invitations.revoke(invitation=invitation)
    elif case == "accepted":
        carol = make_user("carol", email="carol@example.com")
        invitations.accept(invitation=invitation, user=carol)
    elif case == "inactive_tenant":
        Tenant.objects.filter(pk=alice.tenant.pk).update(is_active=False)
    expected = {"tampered": 404, "garbage": 404, "other_salt": 404, "deleted": 404, "inactive_tenant": 404}.get(case, 410)
    words = {"expired_link": "expired", "expired_row": "expired", "revoked": "withdrawn", "accepted": "already accepted",
             "deleted": "no longer exists", "inactive_tenant": "no longer exists"}
    for client in (Client(), signed_in(make_user("carol2", email="carol@example.com"))):
        for response in (client.get(f"/invite/{token}/"), client.post(f"/invite/{token}/", {"password1": PASSWORD,
                                                                                            "password2": PASSWORD})):
            assert response.status_code == expected, (case, response.status_code)
            assert words.get(case, "not valid") in response.content.decode()
    assert not User.objects.filter(username="carol@example.com").exists()


def test_accepting_twice_is_refused_by_the_service(alice: Party) -> None:
    invitation = invite(alice)
    carol = make_user("carol", email="carol@example.com")
    invitations.accept(invitation=invitation, user=carol)
    stale = Invitation.objects.get(pk=invitation.pk)
    stale.accepted_at = None  # a copy read before the first accept
    with pytest.raises(invitations.InvitationClosed, match="already accepted"):
        invitations.accept(invitation=stale, user=carol)
    assert Membership.objects.filter(tenant=alice.tenant, user=carol).count() == 1


def test_an_invitation_expires_after_the_configured_days(alice: Party, settings: object) -> None:
    settings.TOLLGATE_INVITATION_DAYS = 2  # type: ignore[attr-defined]
    now = timezone.now()
    invitation = invite(alice, now=now)
    assert invitation.expires_at == now + timedelta(days=2)
    assert invitations.invitation_from(invitations.token_for(invitation), now=now + timedelta(days=1)) == invitation
    with pytest.raises(invitations.InvitationClosed, match="expired"):
        invitations.invitation_from(invitations.token_for(invitation), now=now + timedelta(days=2, seconds=1))


def test_inviting_an_address_again_replaces_the_pending_invitation(alice: Party) -> None:
    first = invite(alice)
    second = invite(alice, "CAROL@example.com", Membership.Role.OWNER)
    assert Invitation.objects.get(pk=first.pk).status() == "revoked" and second.status() == "pending"
    assert Client().get(path_of(first)).status_code == 410 and Client().get(path_of(second)).status_code == 200
    assert len(mail.outbox) == 2


def test_an_unsent_email_keeps_nothing(alice: Party, monkeypatch: pytest.MonkeyPatch) -> None:
    first = invite(alice)

    def fail(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError("no mail server")

    monkeypatch.setattr(invitations, "send_mail", fail)
    response = signed_in(alice.user).post("/members/invite/", {"email": "carol@example.com", "role": "member"})
    assert response.status_code == 400 and "could not be sent" in response.content.decode()
    assert list(Invitation.objects.filter(tenant=alice.tenant)) == [first] and first.status() == "pending"


@pytest.mark.parametrize(("data", "error"), [
    ({"email": "alice@example.com", "role": "member"}, "already a member"),
    ({"email": "not-an-address", "role": "member"}, "valid email"),
    ({"email": "carol@example.com", "role": "admin"}, "valid choice"),
    ({"email": "x" * 300 + "@example.com", "role": "member"}, "at most 254"),
])
def test_bad_invitations_are_refused_with_a_400(alice: Party, data: dict[str, str], error: str) -> None:
    alice.user.email = "Alice@Example.com"
    alice.user.save()
    response = signed_in(alice.user).post("/members/invite/", data)
    assert response.status_code == 400 and error in response.content.decode()
    assert not Invitation.objects.exists() and not mail.outbox


def test_a_member_sees_the_list_read_only_and_cannot_change_it(alice: Party) -> None:
    member = make_user("mallory", tenant=alice.tenant, role=Membership.Role.MEMBER)
    invitation = invite(alice)
    owner_row = Membership.objects.get(tenant=alice.tenant, user=alice.user)
    client = signed_in(member)
    page = client.get("/members/").content.decode()
    assert "alice" in page and "mallory" in page and "carol@example.com" not in page and "Send invitation" not in page
    for path, data in [("/members/invite/", {"email": "x@example.com", "role": "owner"}),
                       (f"/members/invitations/{invitation.pk}/revoke/", {}),
                       (f"/members/{owner_row.pk}/remove/", {}),
                       (f"/members/{owner_row.pk}/role/", {"role": "member"})]:
        assert client.post(path, data).status_code == 403
    assert invitation.status() == "pending" and Membership.objects.get(pk=owner_row.pk).role == "owner"
    assert Invitation.objects.count() == 1 and len(mail.outbox) == 1
    assert client.get("/members/invite/").status_code == 403  # owners only, whatever the method


def test_bob_cannot_see_or_change_alices_members_and_invitations(alice: Party, bob: Party) -> None:
    alice_member = make_user("alice-member", tenant=alice.tenant, role=Membership.Role.MEMBER)
    row = Membership.objects.get(tenant=alice.tenant, user=alice_member)
    invitation = invite(alice)
    client = signed_in(bob.user)
    page = client.get("/members/").content.decode()
    assert "alice-member" not in page and "carol@example.com" not in page
    for path, data in [(f"/members/invitations/{invitation.pk}/revoke/", {}), (f"/members/{row.pk}/remove/", {}),
                       (f"/members/{row.pk}/role/", {"role": "owner"})]:
        assert client.post(path, data).status_code == 404
    assert invitation.status() == "pending" and Membership.objects.get(pk=row.pk).role == "member"
    assert client.post(path_of(invitation)).status_code == 403  # bob's owner cannot use alice's link
    assert not Membership.objects.filter(tenant=alice.tenant, user=bob.user).exists()
    with pytest.raises(invitations.NotAnOwner):
        invitations.remove_member(tenant=alice.tenant, user=alice_member, by=bob.user)


def test_owners_remove_members_and_change_roles(alice: Party) -> None:
    carol = make_user("carol", tenant=alice.tenant, role=Membership.Role.MEMBER)
    project = Project.objects.create(tenant=alice.tenant, name="Search", slug="search")
    project.owners.add(carol)
    row = Membership.objects.get(tenant=alice.tenant, user=carol)
    client = signed_in(alice.user)
    assert client.post(f"/members/{row.pk}/role/", {"role": "owner"}).status_code == 302
    assert Membership.objects.get(pk=row.pk).role == "owner"
    assert client.post(f"/members/{row.pk}/role/", {"role": "boss"}).status_code == 302
    assert Membership.objects.get(pk=row.pk).role == "owner"
    assert client.post(f"/members/{row.pk}/remove/").status_code == 302
    assert not Membership.objects.filter(pk=row.pk).exists() and not project.owners.exists()
    assert signed_in(carol).get("/").status_code == 403  # no tenant left
    assert "no longer a member" in client.get("/members/").content.decode()
    assert client.get(f"/members/{row.pk}/remove/").status_code == 405


def test_the_last_owner_cannot_leave_be_removed_or_be_demoted(alice: Party) -> None:
    member = make_user("carol", tenant=alice.tenant, role=Membership.Role.MEMBER)
    own = Membership.objects.get(tenant=alice.tenant, user=alice.user)
    client = signed_in(alice.user)
    for path, data in [("/members/leave/", {}), (f"/members/{own.pk}/remove/", {}),
                       (f"/members/{own.pk}/role/", {"role": "member"})]:
        response = client.post(path, data, follow=True)
        assert "last owner" in response.content.decode()
        assert Membership.objects.get(pk=own.pk).role == "owner"
    for call in (lambda: invitations.leave(tenant=alice.tenant, user=alice.user),
                 lambda: invitations.remove_member(tenant=alice.tenant, user=alice.user, by=alice.user),
                 lambda: invitations.change_role(tenant=alice.tenant, user=alice.user, role="member", by=alice.user)):
        with pytest.raises(invitations.LastOwner):
            call()
    # With a second owner, either may go; a member may always leave.
    invitations.change_role(tenant=alice.tenant, user=member, role="owner", by=alice.user)
    assert client.post("/members/leave/").status_code == 302
    assert not Membership.objects.filter(pk=own.pk).exists()
    invitations.leave(tenant=alice.tenant, user=make_user("dave", tenant=alice.tenant, role=Membership.Role.MEMBER))
    left = Membership.objects.filter(tenant=alice.tenant).values_list("user__username", "role")
    assert list(left) == [("carol", "owner")]


def test_an_owner_already_a_member_keeps_the_role_on_accepting(alice: Party) -> None:
    alice_owner = make_user("carol", tenant=alice.tenant, email="carol@example.com")
    invitation = Invitation.objects.create(tenant=alice.tenant, email="carol@example.com", role="member",
                                           expires_at=timezone.now() + timedelta(days=1))
    invitations.accept(invitation=invitation, user=alice_owner)
    assert Membership.objects.get(tenant=alice.tenant, user=alice_owner).role == "owner"


@pytest.mark.needs_postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["remove", "leave", "demote"])
def test_concurrent_changes_keep_an_owner(how: str) -> None:
    from ..conftest import make_party

    alice = make_party("alice")
    carol = make_user("carol", tenant=alice.tenant, role=Membership.Role.OWNER)

    # The first change is made and not yet committed when the other side starts: carol is then no longer an owner.
    first, second = {
        "remove": (lambda: invitations.remove_member(tenant=alice.tenant, user=carol, by=alice.user),
                   lambda: invitations.remove_member(tenant=alice.tenant, user=alice.user, by=carol)),
        "leave": (lambda: invitations.leave(tenant=alice.tenant, user=carol),
                  lambda: invitations.leave(tenant=alice.tenant, user=alice.user)),
        "demote": (lambda: invitations.change_role(tenant=alice.tenant, user=carol, role="member", by=alice.user),
                   lambda: invitations.change_role(tenant=alice.tenant, user=alice.user, role="member", by=carol)),
    }[how]
    errors: list[Exception] = []

    def other_side() -> None:
        try:
            second()
        except (invitations.LastOwner, invitations.NotAnOwner) as e:
            errors.append(e)
        finally:
            connection.close()

    with transaction.atomic():
        first()
        thread = threading.Thread(target=other_side)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waits on the owner rows this transaction locked
    thread.join(10)
    assert len(errors) == 1
    owners = Membership.objects.filter(tenant=alice.tenant, role="owner").values_list("user__username", flat=True)
    assert list(owners) == ["alice"]
