"""What a single sign-on grants: staff and superuser status and tenant memberships, from the provider's groups.

The rules, applied on every sign-in (README, "Single sign-on"):
- Superuser status follows TOLLGATE_OIDC_SUPERUSER_GROUPS when that is set; staff status follows
  TOLLGATE_OIDC_STAFF_GROUPS when that is set. A superuser is always staff. Unset lists change nothing.
- A membership that single sign-on created has source "sso"; those follow the groups: the role changes with them, and the membership goes when no group grants
  the tenant any more.
- A membership made any other way (an invitation, the admin, a command) is never lowered or removed by a sign-in;
  a group granting owner raises it to owner.
- The last owner of a tenant is never demoted or removed by a sign-in: it stays until the tenant has another owner.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from .models import Membership, Tenant

logger = logging.getLogger(__name__)

_RANK = {Membership.Role.MEMBER: 0, Membership.Role.OWNER: 1}


def granted_roles(groups: set[str]) -> dict[str, str]:
    """The role each tenant slug gets from these groups: the highest any of them grants."""
    roles: dict[str, str] = {}
    for group in sorted(groups):
        for slug, role in settings.TOLLGATE_OIDC_TENANT_GROUPS.get(group, ()):
            if slug not in roles or _RANK[Membership.Role(role)] > _RANK[Membership.Role(roles[slug])]:
                roles[slug] = role
    return roles


@transaction.atomic
def sync_access(user: AbstractBaseUser, groups: set[str]) -> None:
    """Apply the group mapping to the user: status flags, then memberships (see the module's rules)."""
    _sync_status(user, groups)
    roles = granted_roles(groups)
    tenants = {tenant.slug: tenant for tenant in Tenant.objects.filter(slug__in=roles)}
    for slug in sorted(roles.keys() - tenants.keys()):
        logger.warning("TOLLGATE_OIDC_TENANT_GROUPS names tenant %r, which does not exist", slug)
    held = {m.tenant_id: m for m in Membership.objects.select_for_update().filter(user=user)}
    marked = {tenant_id for tenant_id, m in held.items() if m.source == Membership.Source.SSO}
    for slug, tenant in tenants.items():
        role, membership = roles[slug], held.get(tenant.pk)
        if membership is None:
            Membership.objects.create(tenant=tenant, user=user, role=role, source=Membership.Source.SSO)
        elif tenant.pk in marked or role == Membership.Role.OWNER:
            _set_role(membership, role)
    for tenant_id in marked - {tenant.pk for tenant in tenants.values()}:
        membership = held.get(tenant_id)
        if membership is not None and _last_owner(membership):
            logger.warning("single sign-on keeps user %s as the last owner of tenant %s", user.pk, tenant_id)
            continue
        if membership is not None:
            membership.delete()


def _sync_status(user: AbstractBaseUser, groups: set[str]) -> None:
    before = (user.is_superuser, user.is_staff)  # type: ignore[attr-defined]
    if settings.TOLLGATE_OIDC_SUPERUSER_GROUPS:
        user.is_superuser = bool(groups & set(settings.TOLLGATE_OIDC_SUPERUSER_GROUPS))  # type: ignore[attr-defined]
    if settings.TOLLGATE_OIDC_STAFF_GROUPS:
        user.is_staff = bool(groups & set(settings.TOLLGATE_OIDC_STAFF_GROUPS))  # type: ignore[attr-defined]
    user.is_staff = user.is_staff or user.is_superuser  # type: ignore[attr-defined]
    if (user.is_superuser, user.is_staff) != before:  # type: ignore[attr-defined]
        user.save(update_fields=["is_superuser", "is_staff"])


def _set_role(membership: Membership, role: str) -> None:
    if membership.role == role:
        return
    if role == Membership.Role.MEMBER and _last_owner(membership):
        logger.warning("single sign-on keeps user %s as the last owner of tenant %s",
                       membership.user_id, membership.tenant_id)
        return
    membership.role = role
    membership.save(update_fields=["role"])


def _last_owner(membership: Membership) -> bool:
    if membership.role != Membership.Role.OWNER:
        return False
    # Lock the tenant's owners, so two sign-ins demoting the last two owners at once cannot both go ahead.
    owners = list(Membership.objects.select_for_update()
                  .filter(tenant_id=membership.tenant_id, role=Membership.Role.OWNER).values_list("pk", flat=True))
    return owners == [membership.pk]

