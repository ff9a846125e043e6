"""Single sign-on settings read from the environment, checked at startup (imported by settings.py: no models here)."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

ROLES = ("owner", "member")
SIGN_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "HS256")
# A tenant slug as Django's SlugField accepts it; an IdP group name is anything but the separators.
_GRANT = re.compile(r"^(?P<group>[^=,]+)=(?P<slug>[-a-zA-Z0-9_]+):(?P<role>[a-z]+)$")

TenantGrants = dict[str, tuple[tuple[str, str], ...]]


def issuer(name: str) -> str:
    """The issuer URL without a trailing slash, "" when unset; anything but an http(s) URL raises."""
    value = os.environ.get(name, "").strip().rstrip("/")
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ImproperlyConfigured(f"{name} must be the provider's https:// issuer URL, got {value!r}")
    return value


def scopes(name: str, default: str) -> str:
    value = " ".join(os.environ.get(name, default).split())
    if "openid" not in value.split():
        raise ImproperlyConfigured(f"{name} must include openid, got {value!r}")
    return value


def sign_algorithm(name: str, default: str) -> str:
    value = os.environ.get(name, default).strip()
    if value not in SIGN_ALGORITHMS:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(SIGN_ALGORITHMS)}, got {value!r}")
    return value


def tenant_grants(name: str) -> TenantGrants:
    """Parse "acme-admins=acme:owner,acme-devs=acme:member" into {group: ((slug, role), ...)}."""
    grants: dict[str, list[tuple[str, str]]] = {}
    for item in os.environ.get(name, "").split(","):
        if not item.strip():
            continue
        match = _GRANT.match(item.strip())
        if not match or match["role"] not in ROLES:
            raise ImproperlyConfigured(
                f"{name} entries are group=tenant-slug:role with role owner or member, got {item.strip()!r}")
        grants.setdefault(match["group"].strip(), []).append((match["slug"], match["role"]))
    return {group: tuple(pairs) for group, pairs in grants.items()}


def password_login(name: str) -> bool:
    value = os.environ.get(name, "on").strip().lower()
    if value not in ("on", "off"):
        raise ImproperlyConfigured(f"{name} must be on or off, got {value!r}")
    return value == "on"
