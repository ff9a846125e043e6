"""Invitations to join a tenant, and the membership changes owners make: remove, change role, leave.

An invitation link carries a TimestampSigner signature of the invitation's id, stamped with the time it was created,
so no secret is stored and the same link can be shown again (the admin does). A tenant always keeps an owner:
every change that could take the last one away locks the tenant's owner rows first, so two owners removing each
other at once leave one of them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.models import AbstractBaseUser, User
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from audit.services import record_update, record_updates

from .models import Invitation, Membership, Project, Tenant

logger = logging.getLogger(__name__)

SALT = "tollgate.invitation"
OWNER = Membership.Role.OWNER
USERNAME_LENGTH = 150  # django.contrib.auth's User.username; an address (up to 254) may be longer


class InvitationError(Exception):
    """An invitation link that cannot be used; ``status`` is the HTTP status its page answers with."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInvitation(InvitationError):
    status = 404


class InvitationClosed(InvitationError):
    status = 410


class WrongAccount(InvitationError):
    status = 403


class LastOwner(Exception):
    """The change would leave the tenant without an owner."""


class NotAnOwner(Exception):
    """Only an owner of the tenant may do this."""


CLOSED = {
    "accepted": "This invitation was already accepted. Sign in to reach the tenant.",
    "revoked": "This invitation was withdrawn by an owner of the tenant. Ask them for a new one.",
    "expired": "This invitation has expired. Ask an owner of the tenant for a new one.",
}


class _StampedSigner(signing.TimestampSigner):
    # The stamp is the invitation's creation time, not the signing time: the link is the same every time it is made.
    def __init__(self, at: datetime) -> None:
        super().__init__(salt=SALT)
        self.at = at

    def timestamp(self) -> str:
        return signing.b62_encode(int(self.at.timestamp()))


def lifetime() -> timedelta:
    return timedelta(days=settings.TOLLGATE_INVITATION_DAYS)


def token_for(invitation: Invitation) -> str:
    """The signed token of the invitation's link."""
    return _StampedSigner(invitation.created_at).sign(str(invitation.pk))


def link_for(invitation: Invitation, *, site: str | None = None) -> str:
    """The absolute link to accept the invitation, under ``site`` (TOLLGATE_PUBLIC_URL when None)."""
    root = (site or settings.TOLLGATE_PUBLIC_URL).rstrip("/")
    return root + reverse("invitation", args=[token_for(invitation)])


def invitation_from(token: str, *, now: datetime | None = None) -> Invitation:
    """The pending invitation a token names. Raises InvalidInvitation or InvitationClosed."""
    try:
        value = signing.TimestampSigner(salt=SALT).unsign(token, max_age=lifetime())
    except signing.SignatureExpired:
        raise InvitationClosed(CLOSED["expired"]) from None
    except signing.BadSignature:
        raise InvalidInvitation("This invitation link is not valid. Check that you copied all of it.") from None
    invitation = Invitation.objects.select_related("tenant").filter(pk=int(value)).first() if value.isdigit() else None
    if invitation is None or not invitation.tenant.is_active:
        raise InvalidInvitation("This invitation no longer exists. Ask an owner of the tenant for a new one.")
    if (status := invitation.status(now)) != "pending":
        raise InvitationClosed(CLOSED[status])
    return invitation


def members_with_email(tenant: Tenant, email: str) -> bool:
    return Membership.objects.filter(tenant=tenant, user__email__iexact=email).exists()


def check_invitable(*, tenant: Tenant, email: str, role: str) -> str:
    """The address to invite, normalized. Raises ValidationError for a bad address or role, or a member's address."""
    email = email.strip()
    validate_email(email)
    if role not in Membership.Role.values:
        raise ValidationError({"role": f"{role!r} is not a role: owner or member."})
    if members_with_email(tenant, email):
        raise ValidationError({"email": f"{email} is already a member of {tenant.name}."})
    return email


def invite(*, tenant: Tenant, email: str, role: str = Membership.Role.MEMBER, invited_by: AbstractBaseUser | None,
           site: str | None = None, now: datetime | None = None) -> Invitation:
    """Create an invitation and email its link; an earlier pending one to the address is revoked (a resend).
    Raises ValidationError (see check_invitable); an email that cannot be sent raises OSError and nothing is kept."""
    email = check_invitable(tenant=tenant, email=email, role=role)
    now = now or timezone.now()
    with transaction.atomic():
        superseded = list(pending(tenant, now).filter(email__iexact=email))
        pending(tenant, now).filter(email__iexact=email).update(revoked_at=now)
        record_updates(instances=superseded, changes={"revoked_at": (None, now)}, verb="resend")  # UPDATE: no signal
        invitation = Invitation.objects.create(tenant=tenant, email=email, role=role, invited_by=invited_by,
                                               created_at=now, expires_at=now + lifetime())
        send_invitation(invitation, site=site)
    logger.info("invitation %s to tenant %s sent", invitation.pk, tenant.slug)
    return invitation


def send_invitation(invitation: Invitation, *, site: str | None = None) -> None:
    """Email the invitation's link to the invited address."""
    inviter: Any = invitation.invited_by
    context = {"invitation": invitation, "tenant": invitation.tenant, "link": link_for(invitation, site=site),
               "inviter": (inviter.get_full_name() or inviter.get_username()) if inviter else "",
               "role": invitation.get_role_display().lower(), "days": settings.TOLLGATE_INVITATION_DAYS}
    send_mail(f"[Tollgate] You are invited to {invitation.tenant.name}",
              render_to_string("accounts/email/invitation.txt", context), None, [invitation.email])


def pending(tenant: Tenant, now: datetime | None = None) -> QuerySet[Invitation]:
    return Invitation.objects.filter(tenant=tenant, accepted_at__isnull=True, revoked_at__isnull=True,
                                     expires_at__gt=now or timezone.now())



def revoke(*, invitation: Invitation, now: datetime | None = None) -> None:
    """Withdraw a pending invitation. Raises InvitationClosed when it was accepted, revoked or expired."""
    now = now or timezone.now()
    if not pending(invitation.tenant, now).filter(pk=invitation.pk).update(revoked_at=now):
        invitation.refresh_from_db()
        raise InvitationClosed(CLOSED[invitation.status(now)])
    invitation.revoked_at = now
    record_update(instance=invitation, changes={"revoked_at": (None, now)}, verb="revoke")  # UPDATE: no signal


def email_matches(user: AbstractBaseUser, invitation: Invitation) -> bool:
    # The link proves the invitee reads that mailbox; an account of another (or no) address must not join with it,
    # or a forwarded or leaked link would let anyone who has an account in.
    email: str = getattr(user, "email", "") or ""
    return email.strip().casefold() == invitation.email.strip().casefold()


def check_account(user: AbstractBaseUser, invitation: Invitation) -> None:
    """Nothing when the user may accept the invitation. Raises WrongAccount when the user's email is not the invited one."""
    if not email_matches(user, invitation):
        raise WrongAccount(f"This invitation is for {invitation.email}, and you are signed in as "
                           f"{user.get_username()}. Sign out, then open the link again.")


def accept(*, invitation: Invitation, user: AbstractBaseUser, now: datetime | None = None) -> Membership:
    """Make the user a member with the invited role (an existing membership keeps its role). Returns the membership.
    Raises InvitationClosed when it is no longer pending, WrongAccount when the user's email is not the invited one."""
    now = now or timezone.now()
    check_account(user, invitation)
    with transaction.atomic():
        # Claim it with a conditional UPDATE: zero rows changed means it was accepted, revoked or expired meanwhile.
        if not pending(invitation.tenant, now).filter(pk=invitation.pk).update(accepted_at=now, accepted_by=user):
            invitation.refresh_from_db()
            raise InvitationClosed(CLOSED[invitation.status(now)])
        record_update(instance=invitation, changes={"accepted_at": (None, now), "accepted_by": (None, user.pk)},
                      verb="accept")
        membership, created = Membership.objects.get_or_create(tenant=invitation.tenant, user=user,
                                                               defaults={"role": invitation.role})
    invitation.accepted_at, invitation.accepted_by = now, user
    logger.info("invitation %s accepted by user %s (%s)", invitation.pk, user.pk, "joined" if created else "a member")
    return membership


def create_invitee(*, invitation: Invitation, name: str, password: str, now: datetime | None = None) -> User:
    """Create the account of a new invitee (username and email are the invited address) and accept for it.
    Raises ValidationError for a weak password or an address that already has an account, and what accept raises."""
    email = invitation.email
    if User.objects.filter(Q(username__iexact=email) | Q(email__iexact=email)).exists():
        raise ValidationError(f"An account for {email} exists already: sign in to accept the invitation.")
    if len(email) > USERNAME_LENGTH:
        raise ValidationError(f"{email} is longer than a username may be ({USERNAME_LENGTH} characters): sign in "
                              "with single sign-on, or ask the owner to invite a shorter address.")
    user = User(username=email, email=email, first_name=name.strip()[:150])
    password_validation.validate_password(password, user)
    user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
            accept(invitation=invitation, user=user, now=now)
    except IntegrityError:  # the same address signed up in a parallel request
        raise ValidationError(f"An account for {email} exists already: sign in to accept the invitation.") from None
    return user


def _owners_locked(tenant: Tenant) -> list[Membership]:
    # Lock every owner row in one order (by id): concurrent changes queue here instead of each counting two owners.
    return list(Membership.objects.select_for_update().filter(tenant=tenant, role=OWNER).order_by("pk"))


def _keep_an_owner(owners: list[Membership], leaving: Membership) -> None:
    if leaving.role == OWNER and not [m for m in owners if m.pk != leaving.pk]:
        raise LastOwner(f"{leaving.user} is the last owner of {leaving.tenant}: make someone else an owner first.")


def _require_owner(owners: list[Membership], by: AbstractBaseUser) -> None:
    if not any(m.user_id == by.pk for m in owners):
        raise NotAnOwner("Only an owner of the tenant can change its members.")


def remove_member(*, tenant: Tenant, user: AbstractBaseUser, by: AbstractBaseUser) -> None:
    """An owner takes the user out of the tenant. Raises NotAnOwner, LastOwner, Membership.DoesNotExist."""
    with transaction.atomic():
        owners = _owners_locked(tenant)
        _require_owner(owners, by)
        membership = Membership.objects.select_for_update().select_related("tenant", "user").get(tenant=tenant, user=user)
        _keep_an_owner(owners, membership)
        _drop(membership)


def leave(*, tenant: Tenant, user: AbstractBaseUser) -> None:
    """The user leaves the tenant. Raises LastOwner, Membership.DoesNotExist."""
    with transaction.atomic():
        owners = _owners_locked(tenant)
        membership = Membership.objects.select_for_update().select_related("tenant", "user").get(tenant=tenant, user=user)
        _keep_an_owner(owners, membership)
        _drop(membership)


def change_role(*, tenant: Tenant, user: AbstractBaseUser, role: str, by: AbstractBaseUser) -> Membership:
    """An owner sets the user's role. Returns the membership. Raises ValueError, NotAnOwner, LastOwner."""
    if role not in Membership.Role.values:
        raise ValueError(f"{role!r} is not a role")
    with transaction.atomic():
        owners = _owners_locked(tenant)
        _require_owner(owners, by)
        membership = Membership.objects.select_for_update().select_related("tenant", "user").get(tenant=tenant, user=user)
        if role != OWNER:
            _keep_an_owner(owners, membership)
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


def _drop(membership: Membership) -> None:
    # The user no longer answers for the tenant's projects either.
    for project in Project.objects.filter(tenant_id=membership.tenant_id, owners=membership.user_id):
        project.owners.remove(membership.user_id)  # through the relation: its signal puts the change in the audit log
    membership.delete()
    logger.info("user %s left tenant %s", membership.user_id, membership.tenant.slug)
