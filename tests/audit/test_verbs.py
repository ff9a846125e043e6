"""Every change to the audited models leaves an entry: create, update, delete, and the verbs that use a plain UPDATE
(revoke, rotate); secrets and digests never reach the log."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import User

from accounts import services
from accounts.models import ApiKey, Membership, Project
from billing.models import Budget, Price
from proxy.models import Deployment, ModelRoute, Provider

from ..conftest import Party
from ..factories import make_key, make_tenant, make_user
from .helpers import entries_for, entries_of, last_for, source

pytestmark = pytest.mark.django_db
CREATE, UPDATE, DELETE = LogEntry.Action.CREATE, LogEntry.Action.UPDATE, LogEntry.Action.DELETE


def test_tenant_create_update_delete_and_rate_limits(alice: Party) -> None:
    tenant = make_tenant("carol")
    assert last_for(tenant).action == CREATE and last_for(tenant).additional_data["tenant"] == tenant.pk
    tenant.requests_per_minute, tenant.max_concurrent = 60, 4
    tenant.save()
    update = last_for(tenant)
    assert update.action == UPDATE and update.changes == {"requests_per_minute": ["None", "60"],
                                                          "max_concurrent": ["None", "4"]}
    pk = tenant.pk
    tenant.delete()
    gone = LogEntry.objects.filter(object_pk=str(pk), content_type__model="tenant").order_by("pk").last()
    assert gone is not None and gone.action == DELETE and source(gone) == "command"


def test_webhook_secret_is_masked(alice: Party) -> None:
    created = entries_for(alice.tenant)[0]
    secret = alice.tenant.alert_webhook_secret
    assert created.changes["alert_webhook_secret"] == ["(none)", "(set)"]
    alice.tenant.alert_webhook_secret = "whsec_other"
    alice.tenant.save()
    assert last_for(alice.tenant).changes == {"alert_webhook_secret": ["(set)", "(set)"]}
    assert secret not in json.dumps(list(LogEntry.objects.values_list("changes", flat=True)))


def test_webhook_url_shows_only_its_host(alice: Party) -> None:
    alice.tenant.alert_webhook_url = "https://hooks.slack.com/services/T000/B000/tokenpart"
    alice.tenant.save()
    assert last_for(alice.tenant).changes == {"alert_webhook_url": ["(none)", "https://hooks.slack.com/…"]}
    assert "tokenpart" not in json.dumps(list(LogEntry.objects.values_list("changes", flat=True)))


def test_membership_role_change_and_removal(alice: Party) -> None:
    user = make_user("dave", tenant=alice.tenant, role=Membership.Role.MEMBER)
    membership = Membership.objects.get(user=user)
    assert last_for(membership).action == CREATE
    services.add_member(tenant=alice.tenant, user=user, role=Membership.Role.OWNER)
    assert last_for(membership).changes == {"role": ["member", "owner"]}
    pk = membership.pk
    membership.delete()
    assert LogEntry.objects.filter(content_type__model="membership", object_pk=str(pk),
                                   action=DELETE, additional_data__tenant=alice.tenant.pk).exists()


def test_key_issue_update_rotate_revoke_without_digest(alice: Party) -> None:
    key, secret = make_key(alice.tenant, name="backend")
    created = last_for(key)
    assert created.action == CREATE and created.additional_data["tenant"] == alice.tenant.pk
    assert "digest" not in created.changes and "last_used_at" not in created.changes
    key.tokens_per_minute = 1000
    key.save()
    assert last_for(key).changes == {"tokens_per_minute": ["None", "1000"]}
    new, _ = services.rotate_key(key=key)
    revoked = last_for(key)
    assert revoked.action == UPDATE and revoked.additional_data["verb"] == "rotate"
    assert revoked.changes["revoked_at"][0] == "None" and revoked.changes["revoked_at"][1] != "None"
    replacement = last_for(new)
    assert replacement.action == CREATE and replacement.additional_data["verb"] == "rotate"
    assert replacement.changes["rotated_from"][1] == str(key.pk)
    services.revoke_key(key=new)
    assert last_for(new).additional_data["verb"] == "revoke" and "revoked_at" in last_for(new).changes
    everything = json.dumps(list(LogEntry.objects.values_list("changes", flat=True)))
    assert key.digest not in everything and secret not in everything and new.digest not in everything


def test_management_token_without_digest() -> None:
    user = User.objects.create_user("ops", is_staff=True)
    token, plaintext = services.issue_management_token(user=user, name="ci")
    created = last_for(token)
    assert created.action == CREATE and "digest" not in created.changes and "tenant" not in created.additional_data
    token.name = "ci-2"
    token.save()
    assert last_for(token).changes == {"name": ["ci", "ci-2"]}
    assert plaintext not in json.dumps(created.changes) and token.digest not in json.dumps(created.changes)


def test_budget_project_and_owners(alice: Party) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10"), name="monthly")
    budget.amount = Decimal("20")
    budget.save()
    assert [e.action for e in entries_for(budget)] == [CREATE, UPDATE]
    assert last_for(budget).changes["amount"] == ["10.000000", "20"]
    assert last_for(budget).additional_data["tenant"] == alice.tenant.pk
    project = Project.objects.create(tenant=alice.tenant, name="Search", slug="search")
    project.owners.add(alice.user)
    owners = last_for(project)
    assert owners.changes["owners"]["operation"] == "add" and owners.additional_data["tenant"] == alice.tenant.pk
    pk = budget.pk
    budget.delete()
    assert entries_of(Budget, pk)[-1].action == DELETE


def test_price_provider_route_deployment_and_no_credential() -> None:
    provider = Provider.objects.create(name="up", kind="openai_compatible", base_url="http://127.0.0.1:9")
    provider.set_credential("sk-very-secret-value")
    provider.save()
    assert last_for(provider).changes == {"credential_encrypted": ["(none)", "(set)"]}
    route = ModelRoute.objects.create(name="gpt-x")
    deployment = Deployment.objects.create(route=route, provider=provider, upstream_model="gpt-x-1")
    deployment.weight = 3
    deployment.save()
    price = Price.objects.create(model="gpt-x", input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    route_pk, deployment_pk = route.pk, deployment.pk
    route.delete()  # takes its deployment with it
    assert [e.action for e in entries_of(ModelRoute, route_pk)] == [CREATE, DELETE]
    assert [e.action for e in entries_of(Deployment, deployment_pk)] == [CREATE, UPDATE, DELETE]
    assert last_for(price).action == CREATE and "tenant" not in last_for(price).additional_data
    everything = json.dumps(list(LogEntry.objects.values_list("changes", flat=True)))
    assert "sk-very-secret-value" not in everything and provider.credential_encrypted not in everything


def test_invitation_is_recorded(alice: Party) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import Invitation

    invitation = Invitation.objects.create(tenant=alice.tenant, email="erin@example.com", invited_by=alice.user,
                                           expires_at=timezone.now() + timedelta(days=7))
    invitation.revoked_at = timezone.now()
    invitation.save()
    assert [e.action for e in entries_for(invitation)] == [CREATE, UPDATE]
    assert last_for(invitation).additional_data["tenant"] == alice.tenant.pk


def test_keys_are_never_deleted_but_a_cascade_is_recorded(alice: Party) -> None:
    key_pk = alice.key.pk
    alice.tenant.delete()
    assert LogEntry.objects.filter(content_type__model="apikey", object_pk=str(key_pk), action=DELETE).exists()
    assert not ApiKey.objects.filter(pk=key_pk).exists()
