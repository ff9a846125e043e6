"""The Members page's changes are on the owners' Activity page: invitations sent, resent, revoked and accepted,
roles changed and members removed."""

from __future__ import annotations

import pytest
from auditlog.models import LogEntry
from django.test import Client

from accounts import invitations
from accounts.models import Invitation, Membership

from ..conftest import Party
from ..factories import make_user
from .helpers import entries_for, source

pytestmark = pytest.mark.django_db


def signed_in(party: Party) -> Client:
    client = Client(REMOTE_ADDR="203.0.113.9")
    client.force_login(party.user)
    return client


def verbs(invitation: Invitation) -> list[str]:
    return [str((e.additional_data or {}).get("verb", e.get_action_display().lower())) for e in entries_for(invitation)]


def test_invitation_lifecycle_is_recorded_from_the_page(alice: Party) -> None:
    client = signed_in(alice)
    assert client.post("/members/invite/", {"email": "carol@example.com", "role": "member"}).status_code == 302
    first = Invitation.objects.get(tenant=alice.tenant)
    assert client.post("/members/invite/", {"email": "carol@example.com", "role": "owner"}).status_code == 302
    second = Invitation.objects.exclude(pk=first.pk).get(tenant=alice.tenant)
    assert verbs(first) == ["create", "resend"]
    assert client.post(f"/members/invitations/{second.pk}/revoke/").status_code == 302
    assert verbs(second) == ["create", "revoke"]
    revoked = entries_for(second)[-1]
    assert source(revoked) == "page" and revoked.actor == alice.user and revoked.remote_addr == "203.0.113.9"
    assert revoked.additional_data["tenant"] == alice.tenant.pk


def test_accepting_records_who_accepted_and_the_new_membership(alice: Party) -> None:
    invitation = invitations.invite(tenant=alice.tenant, email="carol@example.com", invited_by=alice.user)
    carol = make_user("carol", email="carol@example.com")
    membership = invitations.accept(invitation=invitation, user=carol)
    accepted = entries_for(invitation)[-1]
    assert accepted.additional_data["verb"] == "accept" and accepted.changes["accepted_by"] == ["None", str(carol.pk)]
    assert entries_for(membership)[-1].action == LogEntry.Action.CREATE


def test_role_change_and_removal_on_the_members_page(alice: Party) -> None:
    dave = make_user("dave", tenant=alice.tenant, role=Membership.Role.MEMBER)
    membership = Membership.objects.get(user=dave)
    client = signed_in(alice)
    assert client.post(f"/members/{membership.pk}/role/", {"role": "owner"}).status_code == 302
    assert entries_for(membership)[-1].changes == {"role": ["member", "owner"]}
    assert client.post(f"/members/{membership.pk}/remove/").status_code == 302
    removed = LogEntry.objects.filter(content_type__model="membership", object_pk=str(membership.pk),
                                      action=LogEntry.Action.DELETE).get()
    assert source(removed) == "page" and removed.actor == alice.user and removed.additional_data["tenant"] == alice.tenant.pk


def test_a_removed_member_stops_owning_projects_on_the_record(alice: Party) -> None:
    from accounts.models import Project

    dave = make_user("dave", tenant=alice.tenant, role=Membership.Role.MEMBER)
    project = Project.objects.create(tenant=alice.tenant, name="Search", slug="search")
    project.owners.add(dave)
    membership = Membership.objects.get(user=dave)
    assert signed_in(alice).post(f"/members/{membership.pk}/remove/").status_code == 302
    assert not project.owners.exists()
    dropped = entries_for(project)[-1]
    assert dropped.changes["owners"] == {"type": "m2m", "operation": "delete", "objects": ["dave"]}
    assert source(dropped) == "page" and dropped.actor == alice.user


def test_a_membership_deleted_anywhere_drops_project_ownership_on_the_record(alice: Party) -> None:
    from accounts.models import Project

    dave = make_user("dave", tenant=alice.tenant, role=Membership.Role.MEMBER)
    project = Project.objects.create(tenant=alice.tenant, name="Search", slug="search")
    project.owners.add(dave)
    Membership.objects.get(user=dave).delete()  # e.g. the tenant admin's inline, or a shell
    assert not project.owners.exists()
    dropped = entries_for(project)[-1]
    assert dropped.changes["owners"] == {"type": "m2m", "operation": "delete", "objects": ["dave"]}
    assert source(dropped) == "command"
