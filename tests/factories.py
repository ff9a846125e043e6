"""Plain factory functions built on the real services."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User

from accounts import services
from accounts.models import ApiKey, Membership, Tenant
from proxy.models import Deployment, ModelRoute, Provider


def make_tenant(slug: str, **fields: Any) -> Tenant:
    return services.create_tenant(name=fields.pop("name", slug.title()), slug=slug, **fields)


def make_user(username: str, *, tenant: Tenant | None = None, role: str = Membership.Role.OWNER, **fields: Any) -> User:
    user = User.objects.create_user(username=username, password="pw-" + username, **fields)
    if tenant is not None:
        services.add_member(tenant=tenant, user=user, role=role)
    return user


def make_key(tenant: Tenant, name: str = "test key", **fields: Any) -> tuple[ApiKey, str]:
    return services.issue_key(tenant=tenant, name=name, **fields)


def make_route(name: str, *, upstream_model: str, base_url: str = "", kind: str = "openai_compatible",
               provider_name: str | None = None, weight: int = 1, **route_fields: Any) -> ModelRoute:
    """A route with one deployment on a provider (created if missing) at base_url."""
    provider, _ = Provider.objects.get_or_create(
        name=provider_name or f"{kind.replace('_', '-')}-{abs(hash(base_url)) % 10_000}",
        defaults={"kind": kind, "base_url": base_url, "preset": "custom" if kind == "openai_compatible" else ""},
    )
    route, _ = ModelRoute.objects.get_or_create(name=name, defaults=route_fields)
    Deployment.objects.create(route=route, provider=provider, upstream_model=upstream_model, weight=weight)
    return route
