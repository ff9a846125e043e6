from __future__ import annotations

import hmac
import logging
import secrets
import zoneinfo
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from audit import context as audit_context
from audit import services as audit

from . import keys, pepper
from .keys import Limits, limits_of
from .models import ApiKey, ManagementToken, Membership, Project, Tenant

logger = logging.getLogger(__name__)


class KeyNotActive(Exception):
    """The key is already revoked (so it cannot be revoked or rotated again), or expired (so it cannot be rotated)."""


def create_tenant(
    *, name: str, slug: str, timezone_name: str = "UTC", contact_emails: Iterable[str] = ()
) -> Tenant:
    """Create and return a validated tenant. Raises ValidationError on bad fields."""
    tenant = Tenant(name=name, slug=slug, timezone=timezone_name, contact_emails=", ".join(contact_emails))
    tenant.full_clean()
    tenant.save()
    logger.info("tenant created: %s", tenant.slug)
    return tenant


def add_member(*, tenant: Tenant, user: AbstractBaseUser, role: str = Membership.Role.MEMBER) -> Membership:
    """Return the user's membership of the tenant, creating it or updating its role."""
    membership, _ = Membership.objects.update_or_create(tenant=tenant, user=user, defaults={"role": role})
    return membership


def issue_key(
    *,
    tenant: Tenant,
    name: str,
    created_by: AbstractBaseUser | None = None,
    expires_at: datetime | None = None,
    allowed_models: list[str] | None = None,
    rotated_from: ApiKey | None = None,
    limits: Limits | None = None,
    project: Project | None = None,
) -> tuple[ApiKey, str]:
    """Create a key. Returns the row and the plaintext, which is shown once and never stored.
    Raises ValidationError for a past expiry, models outside the tenant's or another tenant's project."""
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry time must be in the future."})
    if project is not None and project.tenant_id != tenant.pk:
        raise ValidationError({"project": "The project must be one of the key's tenant's projects."})
    if rotated_from is None:  # a rotation keeps the old key's list: /v1 still admits only what both lists allow
        check_allowed_models(tenant=tenant, allowed_models=allowed_models or [])
    pepper.require_current()  # raises PepperMismatch: a key minted under another pepper fails every request
    minted = keys.mint()
    key = ApiKey(
        tenant=tenant,
        name=name,
        prefix=minted.prefix,
        digest=minted.digest,
        created_by=created_by,
        expires_at=expires_at,
        allowed_models=list(allowed_models or []),
        rotated_from=rotated_from,
        project=project,
        **(asdict(limits) if limits else {}),
    )
    key.full_clean(exclude=["digest", "prefix", "rotated_from"])
    key.save()
    # An unknown prefix may sit in the cache as "missing"; drop it so the new key works at once.
    keys.forget(key.prefix)
    logger.info("api key issued: tenant=%s prefix=%s", tenant.pk, key.prefix)
    return key, minted.secret


def check_allowed_models(*, tenant: Tenant, allowed_models: Iterable[str]) -> None:
    """Raise ValidationError if a key's list names a model outside its tenant's: a key can only narrow that list.

    Names are compared by route, so an alias of a model the tenant may use is fine (as /v1 compares them)."""
    from proxy.models import ModelRoute

    names = list(allowed_models)
    if not tenant.allowed_models or not names:
        return
    routed = {public: route.name for route in ModelRoute.objects.all() for public in route.public_names()}
    tenant_routes = {routed.get(name, name) for name in tenant.allowed_models}
    outside = [name for name in names if routed.get(name, name) not in tenant_routes]
    if outside:
        raise ValidationError({"allowed_models": f"{', '.join(outside)}: not allowed for tenant {tenant.slug}, which "
                                                 f"may use only {', '.join(tenant.allowed_models)}. A key can only "
                                                 "narrow its tenant's models."})


def revoke_key(*, key: ApiKey, now: datetime | None = None) -> ApiKey:
    """Revoke the key and drop its cache entry. Raises KeyNotActive if it was already revoked."""
    now = now or timezone.now()
    # Conditional UPDATE: two operators revoking at once both succeed without overwriting the time.
    changed = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now)
    if not changed:
        raise KeyNotActive(f"{key.masked} is already revoked")
    key.revoked_at = now
    # The UPDATE above sends no signal, so the audit entry is written here.
    audit.record_update(instance=key, changes={"revoked_at": (None, now)}, verb="revoke")
    keys.forget(key.prefix)  # and once more after commit, in every process
    logger.info("api key revoked: tenant=%s prefix=%s", key.tenant_id, key.prefix)
    return key


@transaction.atomic
@audit_context.verb("rotate")  # names both entries, the old key's revocation and its replacement's creation
def rotate_key(
    *, key: ApiKey, created_by: AbstractBaseUser | None = None, now: datetime | None = None
) -> tuple[ApiKey, str]:
    """Revoke the key and issue its replacement with the same settings. Returns the new row and plaintext.
    Raises KeyNotActive for a revoked or expired key (its replacement would carry the same past expiry)."""
    from billing.services import carry_key_budgets

    if key.status(now) == "expired":
        raise KeyNotActive(f"{key.masked} has expired; issue a new key instead.")
    revoke_key(key=key, now=now)
    new, secret = issue_key(
        tenant=key.tenant,
        name=key.name,
        created_by=created_by,
        expires_at=key.expires_at,
        allowed_models=key.allowed_models,
        rotated_from=key,
        limits=limits_of(key),
        project=key.project,
    )
    carry_key_budgets(old=key, new=new)
    return new, secret


def forget_tenant_keys(*, tenant: Tenant) -> None:
    """Drop the cached lookups of every key of the tenant, e.g. after it was deactivated (saving it does this too)."""
    keys.forget_tenant(tenant.pk)


EXPIRY_NOTICE_DAYS = 7


def keys_expiring_soon(*, now: datetime | None = None) -> list[int]:
    """Ids of active keys that expire within a week and have had no notice yet."""
    now = now or timezone.now()
    return list(ApiKey.objects.active(now).filter(expires_at__lte=now + timedelta(days=EXPIRY_NOTICE_DAYS),
                                                  expiry_notified_at__isnull=True).values_list("pk", flat=True))


def send_expiry_notice(*, key_id: int, now: datetime | None = None) -> bool:
    """Tell the tenant's contacts that the key expires soon, at most once. Returns whether this call sent it."""
    now = now or timezone.now()
    if not ApiKey.objects.filter(pk=key_id, expiry_notified_at__isnull=True).update(expiry_notified_at=now):
        return False
    key = ApiKey.objects.select_related("tenant").get(pk=key_id)
    recipients = key.tenant.contact_email_list()
    if not recipients:
        return False
    context = {"key": key, "tenant": key.tenant, "link": f"{settings.TOLLGATE_PUBLIC_URL}/keys/",
               "expires_at": timezone.localtime(key.expires_at, zoneinfo.ZoneInfo(key.tenant.timezone))}
    try:
        send_mail(f"[Tollgate] {key.tenant.name}: API key {key.name} expires {context['expires_at']:%Y-%m-%d}",
                  render_to_string("accounts/email/key_expiring.txt", context), None, recipients)
    except Exception:
        ApiKey.objects.filter(pk=key_id).update(expiry_notified_at=None)  # give the mark back for the retry
        raise
    logger.info("expiry notice for key %s of tenant %s sent", key.prefix, key.tenant.slug)
    return True


def issue_management_token(*, user: AbstractBaseUser, name: str) -> tuple[ManagementToken, str]:
    """Create a management API token for the user. Returns the row and the plaintext, shown once.
    Raises PepperMismatch when this process's pepper is not the one tokens are checked under."""
    pepper.require_current()
    prefix = secrets.token_hex(6)
    plaintext = f"tgm-{prefix}-{secrets.token_urlsafe(30)}"
    token = ManagementToken.objects.create(user=user, name=name, prefix=prefix, digest=keys.digest(plaintext))
    logger.info("management token issued: user=%s prefix=%s", user.pk, prefix)
    return token, plaintext


def revoke_management_token(*, token: ManagementToken, now: datetime | None = None) -> bool:
    """Revoke the token. Returns False if it was already revoked."""
    now = now or timezone.now()
    if not ManagementToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now):
        return False
    token.revoked_at = now
    audit.record_update(instance=token, changes={"revoked_at": (None, now)}, verb="revoke")  # UPDATE sends no signal
    logger.info("management token revoked: user=%s prefix=%s", token.user_id, token.prefix)
    return True


def management_token_user(presented: str, *, now: datetime | None = None) -> tuple[AbstractBaseUser, ManagementToken] | None:
    """The active user of a presented management token, or None."""
    parts = presented.split("-", 2)  # the secret part may itself contain dashes
    if len(parts) != 3 or parts[0] != "tgm" or len(presented) > 200:
        return None
    token = ManagementToken.objects.select_related("user").filter(prefix=parts[1], revoked_at__isnull=True).first()
    if token is None or not hmac.compare_digest(token.digest, keys.digest(presented)) or not token.user.is_active:
        return None
    now = now or timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ManagementToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user, token
