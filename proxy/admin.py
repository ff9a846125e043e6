from __future__ import annotations

import json
import re
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from . import breaker, probe
from .admin_checks import ConnectionTest, describe, reset_breakers
from .models import Deployment, ModelRoute, Provider, StoredResponse
from .providers.compatible import PRESETS

# How the admin names each preset; a preset missing here shows its id.
PRESET_LABELS = {
    "openai": "OpenAI", "openrouter": "OpenRouter", "deepseek": "DeepSeek", "groq": "Groq", "together": "Together AI",
    "mistral": "Mistral", "ollama": "Ollama", "vllm": "vLLM", "lmstudio": "LM Studio", "custom": "Custom (give a base URL)",
    "gemini": "Google Gemini",
}


def preset_label(preset: str) -> str:
    return PRESET_LABELS.get(preset, preset)


BATCH_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_batch_queue(name: str) -> None:
    """Raise ValidationError unless ``name`` is empty or a plain Celery queue name other than beat's "celery"."""
    if name and (not BATCH_QUEUE_NAME.fullmatch(name) or name == "celery"):
        raise ValidationError("A queue name: letters, digits, '.', '_' and '-', starting with a letter or digit; "
                              "not 'celery', which runs the scheduled jobs.")


def routed_names() -> dict[str, str]:
    """Every public model name of every route (its name, aliases and prefixed names), mapped to the route's name."""
    return {public: route.name for route in ModelRoute.objects.all() for public in route.public_names()}


class NameListField(forms.Field):
    """Model names typed one per line or separated by commas, as on the tenant Keys page; a JSON list works too."""

    widget = forms.Textarea(attrs={"rows": 2, "cols": 32})

    def prepare_value(self, value: object) -> object:
        return ", ".join(str(name) for name in value) if isinstance(value, list) else value

    def to_python(self, value: object) -> list[str]:
        if isinstance(value, list):
            return value
        text = str(value or "").strip()
        if text.startswith("["):
            try:
                names = json.loads(text)
            except ValueError:
                raise forms.ValidationError("Write model names separated by commas or on separate lines.") from None
            if not isinstance(names, list) or not all(isinstance(name, str) and name.strip() for name in names):
                raise forms.ValidationError("Every model name must be a non-empty string.")
        else:
            names = text.replace("\n", ",").split(",")
        # Order kept, blanks and repeats dropped.
        return list(dict.fromkeys(name.strip() for name in names if name.strip()))


class ProviderForm(forms.ModelForm):
    preset = forms.ChoiceField(
        required=False, choices=[("", "---------"), *((p, preset_label(p)) for p in PRESETS)],
        help_text="For OpenAI-compatible providers: the vendor, for its default URL and quirks.",
    )
    base_url = forms.URLField(
        required=False, assume_scheme="https",
        help_text="Leave blank to use the preset's URL. Azure OpenAI: the resource's endpoint, e.g. "
                  "https://my-resource.openai.azure.com (required). AWS Bedrock: blank for the region's endpoint.")
    # Write-only: the stored key is never rendered back into the page.
    api_key = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted. Leave blank to keep the current key. Azure OpenAI: one of the resource's keys. "
                  "AWS Bedrock: ACCESS_KEY_ID:SECRET_ACCESS_KEY, or ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN.",
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored key.")

    class Meta:
        model = Provider
        fields = ["name", "kind", "preset", "base_url", "api_version", "region", "api_key", "clear_api_key",
                  "credential_env", "is_active"]

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean()
        kind = cleaned.get("kind")
        # Each of these applies to one kind only: a value elsewhere would be ignored, so it is refused instead.
        if cleaned.get("api_version") and kind != Provider.Kind.AZURE:
            self.add_error("api_version", "Only Azure OpenAI providers take an api-version; leave it blank.")
        if cleaned.get("region") and kind != Provider.Kind.BEDROCK:
            self.add_error("region", "Only AWS Bedrock providers take a region; leave it blank.")
        return cleaned

    def save(self, commit: bool = True) -> Provider:
        provider: Provider = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            provider.set_credential("")
        elif self.cleaned_data.get("api_key"):
            provider.set_credential(self.cleaned_data["api_key"])
        if commit:
            provider.save()
        return provider


@admin.register(Provider)
class ProviderAdmin(ConnectionTest, admin.ModelAdmin):
    form = ProviderForm
    list_display = ["name", "kind", "preset_name", "resolved_base_url", "credential_status", "is_active"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name"]
    readonly_fields = ["connection_button"]
    actions = ["test_connection"]

    def check_connection(self, provider: Provider) -> probe.Outcome:
        return probe.check_provider(provider)

    @admin.display(description="preset", ordering="preset")
    def preset_name(self, provider: Provider) -> str:
        return preset_label(provider.preset) if provider.preset else "—"

    @admin.display(description="API key")
    def credential_status(self, provider: Provider) -> str:
        if provider.credential_encrypted:
            return "stored (encrypted)"
        return f"from ${provider.credential_env}" if provider.credential_env else "none"


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 1
    fields = ["provider", "upstream_model", "weight", "is_active"]


class ModelRouteForm(forms.ModelForm):
    aliases = NameListField(required=False, help_text="Other names clients may send for this model, separated by "
                                                       "commas or on separate lines, e.g. gpt4o, default.")
    fallbacks = NameListField(required=False, help_text="Models tried in order when every deployment of this one "
                                                         "fails, e.g. claude-sonnet. A key must be allowed to use them.")
    context_window_fallbacks = NameListField(
        required=False, help_text="Models tried in order, instead, when the prompt is too long for this one.")

    class Meta:
        model = ModelRoute
        fields = ["name", "aliases", "strip_prefix", "is_active", "max_attempts", "retry_budget_seconds", "fallbacks",
                  "context_window_fallbacks", "cache_enabled", "cache_ttl_seconds", "cache_shared", "cache_per_user",
                  "cache_sampled", "cache_cost", "batch_queue", "batch_discount_percent"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Left empty, the cache settings keep their defaults: a route saved without them is a route without a cache.
        for name in ("cache_ttl_seconds", "cache_cost"):
            if name in self.fields:
                self.fields[name].required = False

    def clean_cache_ttl_seconds(self) -> int:
        value = self.cleaned_data.get("cache_ttl_seconds")
        return int(ModelRoute._meta.get_field("cache_ttl_seconds").default) if value is None else int(value)

    def clean_cache_cost(self) -> str:
        return str(self.cleaned_data.get("cache_cost") or ModelRoute.CacheCost.FREE)

    def clean_batch_queue(self) -> str:
        name = str(self.cleaned_data.get("batch_queue") or "").strip()
        check_batch_queue(name)
        return name

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        own = {cleaned.get("name", ""), *cleaned.get("aliases", [])}
        own |= {cleaned.get("strip_prefix", "") + name for name in set(own)} if cleaned.get("strip_prefix") else set()
        routed = routed_names()
        if self.instance.pk:  # under its saved name too, while it is being renamed
            own |= {name for name, route in routed.items() if route == self.instance.name}
        for field in ("fallbacks", "context_window_fallbacks"):
            names = cleaned.get(field) or []
            if itself := [name for name in names if name in own]:
                self.add_error(field, f"A route cannot fall back to itself: {', '.join(itself)}.")
            elif unknown := [name for name in names if name not in routed]:
                self.add_error(field, f"No route answers to {', '.join(unknown)}.")
        return cleaned


@admin.register(ModelRoute)
class ModelRouteAdmin(admin.ModelAdmin):
    form = ModelRouteForm
    list_display = ["name", "aliases", "strip_prefix", "deployment_count", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["name"]
    fieldsets = [
        (None, {"fields": ["name", "aliases", "strip_prefix", "is_active", "created_at"]}),
        ("Retries", {"fields": ["max_attempts", "retry_budget_seconds"],
                     "description": "Before the first byte only. Empty fields use TOLLGATE_RETRY_ATTEMPTS and "
                                    "TOLLGATE_RETRY_BUDGET_SECONDS."}),
        ("Fallbacks", {"fields": ["fallbacks", "context_window_fallbacks"]}),
        ("Response cache", {"fields": ["cache_enabled", "cache_ttl_seconds", "cache_shared", "cache_per_user",
                                       "cache_sampled", "cache_cost"]}),
        ("Batches", {"fields": ["batch_queue", "batch_discount_percent"],
                     "description": "Empty fields use the tenant tier's queue and the price's batch discount."}),
    ]
    readonly_fields = ["created_at"]
    inlines = [DeploymentInline]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).prefetch_related("deployments")

    @admin.display(description="deployments")
    def deployment_count(self, route: ModelRoute) -> int:
        return len(route.deployments.all())


@admin.register(Deployment)
class DeploymentAdmin(ConnectionTest, admin.ModelAdmin):
    list_display = ["__str__", "provider", "upstream_model", "weight", "is_active", "circuit_breaker"]
    list_filter = ["is_active", "provider"]
    list_select_related = ["route", "provider"]
    search_fields = ["route__name", "provider__name", "upstream_model"]
    fields = ["route", "provider", "upstream_model", "weight", "is_active", "circuit_breaker", "connection_button"]
    readonly_fields = ["circuit_breaker", "connection_button"]
    actions = ["test_connection", "reset_circuit_breaker"]

    def check_connection(self, deployment: Deployment) -> probe.Outcome:
        return probe.check_deployment(deployment)

    @admin.display(description="circuit breaker")
    def circuit_breaker(self, deployment: Deployment) -> str:
        if deployment.pk is None:
            return "closed"
        statuses, source = breaker.statuses([deployment.pk])
        return describe(statuses[deployment.pk], source)

    @admin.action(description="Reset circuit breaker")
    def reset_circuit_breaker(self, request: HttpRequest, queryset: Any) -> None:
        reset_breakers(self, request, queryset)


class ReadOnly(admin.ModelAdmin):
    """Rows written by the API and the workers: operators look, they do not edit."""

    show_full_result_count = False  # no COUNT(*) of a large table on every page

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(StoredResponse)
class StoredResponseAdmin(ReadOnly):
    """Read-only: the gateway writes these. The request and response bodies (the tenant's prompts and answers) are
    not shown; the tenant reads them through the API."""

    list_display = ["id", "tenant", "model", "status", "background", "created_at"]
    list_filter = ["status", "background"]
    list_select_related = ["tenant"]
    search_fields = ["=id", "tenant__slug"]
    fields = ["id", "tenant", "key", "model", "status", "background", "previous_response_id", "created_at",
              "updated_at", "expires_at"]
    readonly_fields = fields
