from __future__ import annotations

import secrets
import zoneinfo
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import models
from django.db.models import Q
from django.utils import timezone as tz

from .webhooks import validate_webhook_url


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone such as Europe/Berlin")


def split_emails(value: str) -> list[str]:
    return [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]


def validate_email_list(value: str) -> None:
    for email in split_emails(value):
        validate_email(email)


def validate_model_list(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise ValidationError('Allowed models must be a list of model names, e.g. ["gpt-4o", "demo"], or [] for all')


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class Tenant(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    contact_emails = models.TextField(
        blank=True, validators=[validate_email_list], help_text="Budget alerts go here. Comma or newline separated."
    )
    is_active = models.BooleanField(default=True, help_text="An inactive tenant's keys are refused.")
    alert_webhook_url = models.URLField(
        blank=True, validators=[validate_webhook_url],
        help_text="Budget alerts are also POSTed here as JSON, signed with the secret below. Public addresses only.")
    alert_webhook_secret = models.CharField(
        max_length=64, blank=True, default=new_webhook_secret,
        help_text="HMAC-SHA256 key of the X-Tollgate-Signature header. Share it with whoever receives the webhook.")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Empty means no limit.")
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Prompt tokens plus the completion tokens asked for. Empty means no limit.")
    max_concurrent = models.PositiveIntegerField(null=True, blank=True, help_text="Requests in flight at once. Empty means no limit.")
    allowed_models = models.JSONField(
        default=list, blank=True, validators=[validate_model_list],
        help_text="Public model names this tenant may call; empty means every routed model. Keys can only narrow it.")
    created_at = models.DateTimeField(default=tz.now)

    class Tier(models.TextChoices):
        HIGH = "high"
        DEFAULT = "default"
        LOW = "low"

    batch_tier = models.CharField(
        max_length=8, choices=Tier.choices, default=Tier.DEFAULT, db_default=Tier.DEFAULT,
        help_text="Which queue runs this tenant's batches (TOLLGATE_QUEUE_HIGH / _DEFAULT / _LOW name them).")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def contact_email_list(self) -> list[str]:
        return split_emails(self.contact_emails)


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    class Source(models.TextChoices):
        LOCAL = "local", "Made here (an invitation, the admin, a command)"
        SSO = "sso", "Granted by single sign-on"

    # Single sign-on keeps the memberships it granted in step with the provider's groups, and never lowers or
    # removes one made here (accounts/sso_access.py).
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.LOCAL, db_default=Source.LOCAL)
    created_at = models.DateTimeField(default=tz.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user_per_tenant")]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"


class Project(models.Model):
    """A part of a tenant's spend: its keys belong to it, and usage, budgets and pages can be split by it."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, help_text="Unique within the tenant; names the project in config files.")
    owners = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="owned_projects",
                                    help_text="Members answerable for the project's keys and spend.")
    created_at = models.DateTimeField(default=tz.now)

    class Meta:
        ordering = ["tenant", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "slug"], name="project_unique_slug_per_tenant")]

    def __str__(self) -> str:
        return self.name


class Invitation(models.Model):
    """An owner's invitation to join a tenant. The link carries a signature of the row's id, never a stored secret."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=tz.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="invitation_tenant_created")]

    def __str__(self) -> str:
        return f"{self.email} to {self.tenant} ({self.role})"

    def status(self, now: datetime | None = None) -> str:
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= (now or tz.now()) else "pending"


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self, now: datetime | None = None) -> ApiKeyQuerySet:
        now = now or tz.now()
        return self.filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))

    def for_tenant(self, tenant: Tenant) -> ApiKeyQuerySet:
        return self.filter(tenant=tenant)

    def visible_to(self, user: object) -> ApiKeyQuerySet:
        return self.filter(tenant__memberships__user=user)


class ApiKey(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="api_keys",
                                help_text="Its requests count toward this project. Empty: the tenant's, no project.")
    # The public id embedded in the key (tg-<prefix>-<secret>). Safe to show and search.
    prefix = models.CharField(max_length=32, unique=True)
    # HMAC-SHA256 of the whole key under TOLLGATE_KEY_PEPPER. The key itself is never stored.
    digest = models.CharField(max_length=64)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=tz.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    allowed_models = models.JSONField(
        default=list, blank=True, validators=[validate_model_list], help_text="Public model names; empty means all."
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text="Empty means no limit.")
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Prompt tokens plus the completion tokens asked for. Empty means no limit.")
    max_concurrent = models.PositiveIntegerField(null=True, blank=True, help_text="Requests in flight at once. Empty means no limit.")
    class Cache(models.TextChoices):
        ROUTE = "route", "As the route says"
        ON = "on", "On for every route"
        OFF = "off", "Off"

    response_cache = models.CharField(max_length=8, choices=Cache.choices, default=Cache.ROUTE,
                                      help_text="Whether this key's requests use the response cache.")
    last_used_at = models.DateTimeField(null=True, blank=True)
    expiry_notified_at = models.DateTimeField(null=True, blank=True, help_text="When the expiry notice went out.")
    rotated_from = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rotated_to"
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        indexes = [models.Index(fields=["tenant", "-created_at"], name="apikey_tenant_created")]

    def __str__(self) -> str:
        return f"{self.name} ({self.masked})"

    @property
    def masked(self) -> str:
        return f"tg-{self.prefix}-…"

    def status(self, now: datetime | None = None) -> str:
        now = now or tz.now()
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class ManagementToken(models.Model):
    """A token for the management API (/api/), acting as its user. Not a /v1 key; stored only as a digest."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="management_tokens")
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=32, unique=True)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=tz.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} (tgm-{self.prefix}-…)"


class KeyPepper(models.Model):
    """The fingerprint of the pepper every API key digest is made under: one row, written with the first key.

    A process whose pepper has another fingerprint would issue keys no server accepts, so it refuses to.
    """

    fingerprint = models.CharField(max_length=64, unique=True, help_text="HMAC-SHA256 of a fixed label under the pepper.")
    created_at = models.DateTimeField(default=tz.now)

    def __str__(self) -> str:
        return f"pepper {self.fingerprint[:12]}…"
