from __future__ import annotations

import os
import re
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from . import credentials, providers
from .providers.azure import DEFAULT_API_VERSION
from .providers.compatible import PRESETS

API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?|preview|latest")
AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")


def validate_names(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValidationError('Aliases must be a list of model names, e.g. ["gpt4o", "default"]')


class Provider(models.Model):
    class Kind(models.TextChoices):
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible"
        ANTHROPIC = "anthropic", "Anthropic"
        AZURE = "azure", "Azure OpenAI"
        BEDROCK = "bedrock", "AWS Bedrock"
        DEMO = "demo", "Built-in demo model"

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    preset = models.CharField(
        max_length=32, blank=True, choices=[(p, p) for p in PRESETS],
        help_text="For OpenAI-compatible providers: the vendor, for its default URL and quirks.",
    )
    base_url = models.URLField(blank=True, help_text="Leave blank to use the preset's URL.")
    # Fernet ciphertext; the plaintext is never shown back or logged.
    credential_encrypted = models.TextField(blank=True, editable=False)
    credential_env = models.CharField(
        max_length=128, blank=True, help_text="Or: the name of an environment variable holding the API key."
    )
    api_version = models.CharField(
        max_length=32, blank=True, default="", db_default="",
        help_text="Azure OpenAI: the api-version to send, e.g. 2024-10-21. Empty means the kind's default.")
    region = models.CharField(
        max_length=32, blank=True, default="", db_default="",
        help_text="AWS Bedrock: the region, e.g. us-east-1 (the credential is ACCESS_KEY_ID:SECRET[:SESSION_TOKEN]).")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.kind == self.Kind.OPENAI_COMPATIBLE and not (self.base_url or PRESETS.get(self.preset or "custom", {}).get("base_url")):
            raise ValidationError({"base_url": "Give a base URL, or pick a preset that has one."})
        if self.kind == self.Kind.AZURE and not self.base_url:
            raise ValidationError({"base_url": "Give the Azure OpenAI resource's endpoint, "
                                               "e.g. https://my-resource.openai.azure.com."})
        if self.api_version and not API_VERSION.fullmatch(self.api_version):
            raise ValidationError({"api_version": "Use an Azure OpenAI api-version such as 2024-10-21 or "
                                                  "2025-04-01-preview."})
        if self.kind == self.Kind.BEDROCK and not AWS_REGION.fullmatch(self.region):
            raise ValidationError({"region": "Give the AWS region of the Bedrock models, e.g. us-east-1."})
        if self.credential_env and not re.fullmatch(r"[A-Z_][A-Z0-9_]*", self.credential_env):
            raise ValidationError({"credential_env": "Use an environment variable name such as OPENAI_API_KEY."})

    def set_credential(self, plaintext: str) -> None:
        self.credential_encrypted = credentials.encrypt(plaintext) if plaintext else ""

    def credential(self) -> str:
        if self.credential_encrypted:
            return credentials.decrypt(self.credential_encrypted)
        return os.environ.get(self.credential_env, "") if self.credential_env else ""

    def resolved_base_url(self) -> str:
        if self.base_url:
            return self.base_url
        if self.kind == self.Kind.ANTHROPIC:
            return "https://api.anthropic.com"
        if self.kind == self.Kind.BEDROCK:
            return f"https://bedrock-runtime.{self.region}.amazonaws.com" if self.region else ""
        if self.kind != self.Kind.OPENAI_COMPATIBLE:
            return ""
        return str(PRESETS.get(self.preset or "custom", {}).get("base_url", ""))

    def quirks(self) -> dict[str, object]:
        """What a Target of this provider needs besides its URL and key (proxy/routing.py copies it to Target.options)."""
        if self.kind == self.Kind.OPENAI_COMPATIBLE:
            return dict(PRESETS.get(self.preset or "custom", {}))
        if self.kind == self.Kind.AZURE:
            # Azure speaks the Responses API too (the v1 API), relayed natively.
            return {"stream_usage": True, "responses": True, "api_version": self.api_version or DEFAULT_API_VERSION}
        if self.kind == self.Kind.BEDROCK:
            return {"stream_usage": True, "region": self.region}
        return {}

    @property
    def has_credential(self) -> bool:
        return bool(self.credential_encrypted or self.credential_env)


class ModelRoute(models.Model):
    name = models.CharField(max_length=200, unique=True, help_text="The model name clients send, e.g. gpt-4o.")
    aliases = models.JSONField(default=list, blank=True, validators=[validate_names])
    strip_prefix = models.CharField(
        max_length=64, blank=True, help_text="Also accept names with this prefix, e.g. 'Proxy/' for Proxy/gpt-4o."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Retries before the first byte; empty means the global default (TOLLGATE_RETRY_ATTEMPTS / _BUDGET_SECONDS).
    max_attempts = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Upstream attempts per request, the first one included. Empty means the global default.")
    retry_budget_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="No retry starts after this many seconds. Empty means the global default.")
    fallbacks = models.JSONField(
        default=list, blank=True, validators=[validate_names],
        help_text='Models tried in order when every deployment of this one fails, e.g. ["claude-sonnet"].')
    context_window_fallbacks = models.JSONField(
        default=list, blank=True, validators=[validate_names],
        help_text="Models tried in order when the prompt is too long for this one.")
    # Response cache: off unless the route (or a key) opts in.
    cache_enabled = models.BooleanField(default=False, help_text="Answer identical requests from the response cache.")
    cache_ttl_seconds = models.PositiveIntegerField(default=300, validators=[MinValueValidator(1)])
    cache_shared = models.BooleanField(
        default=False, help_text="Share cached answers between tenants (only for routes whose answers are not private).")
    cache_per_user = models.BooleanField(
        default=False, help_text="Answers depend on the request's user field: never cache a request that has one.")
    cache_sampled = models.BooleanField(
        default=False, help_text="Also cache requests with n > 1 and a temperature above 0.")

    class CacheCost(models.TextChoices):
        FREE = "free", "Free"
        FULL = "full", "Full price of the cached answer"

    cache_cost = models.CharField(max_length=8, choices=CacheCost.choices, default=CacheCost.FREE,
                                  help_text="What a cache hit costs the tenant.")
    # Batches (the /v1/batches API): an optional queue of this model's own, so its workers scale separately.
    batch_queue = models.CharField(
        max_length=64, blank=True, default="", db_default="",
        help_text="Run batch lines for this model on this Celery queue instead of the tenant tier's queue.")
    batch_discount_percent = models.DecimalField(
        max_digits=5, decimal_places=2, null=True, blank=True,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(100))],
        help_text="Discount on batch lines' cost, e.g. 50. Empty means the price's batch discount.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def public_names(self) -> list[str]:
        names = [self.name, *self.aliases]
        return names + [self.strip_prefix + n for n in names] if self.strip_prefix else names


class Deployment(models.Model):
    route = models.ForeignKey(ModelRoute, on_delete=models.CASCADE, related_name="deployments")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="deployments")
    upstream_model = models.CharField(max_length=200, help_text="The model name the provider knows.")
    weight = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    is_active = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"{self.route} → {self.provider}/{self.upstream_model}"

    def clean(self) -> None:
        if self.provider_id and self.provider.kind not in providers.KINDS:
            raise ValidationError({"provider": "Unknown provider kind."})


class StoredResponse(models.Model):
    """One Responses API answer kept for its tenant: read back, continued with previous_response_id, or run in the
    background. Only the tenant's own keys can see it; it is deleted after TOLLGATE_RESPONSES_RETENTION_DAYS."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"
        INCOMPLETE = "incomplete"

    id = models.CharField(max_length=64, primary_key=True)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    key = models.ForeignKey("accounts.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    model = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETED)
    background = models.BooleanField(default=False)
    previous_response_id = models.CharField(max_length=64, blank=True, default="")
    request = models.JSONField(default=dict, help_text="The create body as sent (a background run reads it).")
    input_items = models.JSONField(default=list, help_text="This turn's input, as items.")
    response = models.JSONField(default=dict, help_text="The Response object as last returned.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "created_at"], name="stored_response_tenant_time")]

    def __str__(self) -> str:
        return self.id
