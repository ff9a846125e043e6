"""Plain factory functions built on the real services."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User

from accounts import services
from accounts.models import ApiKey, Membership, Tenant


def make_tenant(slug: str, **fields: Any) -> Tenant:
    return services.create_tenant(name=fields.pop("name", slug.title()), slug=slug, **fields)


def make_user(username: str, *, tenant: Tenant | None = None, role: str = Membership.Role.OWNER, **fields: Any) -> User:
    user = User.objects.create_user(username=username, password="pw-" + username, **fields)
    if tenant is not None:
        services.add_member(tenant=tenant, user=user, role=role)
    return user


def make_key(tenant: Tenant, name: str = "test key", **fields: Any) -> tuple[ApiKey, str]:
    return services.issue_key(tenant=tenant, name=name, **fields)
