from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q, QuerySet
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import lazy
from django.utils.html import escape

from billing.admin import BudgetInline, KeyBudgetInline, send_test_alert, spend_chart
from proxy.admin import NameListField, routed_names

from . import keys, pepper, services
from .models import ApiKey, ManagementToken, Membership, Project, Tenant
from .invitation_admin import InvitationAdmin as InvitationAdmin  # registers the invitation admin
from .project_admin import ProjectAdmin as ProjectAdmin  # registers the project admin

LIMITS = ["requests_per_minute", "tokens_per_minute", "max_concurrent"]
LIMITS_HELP = "A request must fit both its key's limits and its tenant's."


def routed_list(routed: dict[str, str]) -> str:
    return ", ".join(sorted(set(routed.values()))) or "none yet"


def routed_help(lead: str) -> str:
    return escape(f"{lead} Routed models: {routed_list(routed_names())}.")


class AllowedModelsForm(forms.ModelForm):
    """The allowed models of a tenant or a key, typed as a list; every name added must be a routed model."""

    allowed_models = NameListField(required=False)
    allowed_models_help = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lazy: an inline shows the help once, and its rows need no query for it.
        self.fields["allowed_models"].help_text = lazy(routed_help, str)(self.allowed_models_help)

    def added_models(self) -> list[str]:
        # Names saved before may have lost their route since: only names added now are checked.
        saved = self.instance.allowed_models or []
        return [name for name in self.cleaned_data.get("allowed_models") or [] if name not in saved]

    def clean_allowed_models(self) -> list[str]:
        if added := self.added_models():
            routed = routed_names()
            if unknown := [name for name in added if name not in routed]:
                raise ValidationError(f"Not a routed model: {', '.join(unknown)}. Routed models: {routed_list(routed)}.")
        return self.cleaned_data["allowed_models"]


class TenantForm(AllowedModelsForm):
    allowed_models_help = ("Models this tenant may call, separated by commas or on separate lines; empty means "
                           "every routed model. Its keys and playground can only narrow it.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "batch_tier" in self.fields:
            self.fields["batch_tier"].required = False  # left out of a submission: the tenant keeps its tier

    def clean_batch_tier(self) -> str:
        return str(self.cleaned_data.get("batch_tier") or self.instance.batch_tier)


class ApiKeyForm(AllowedModelsForm):
    allowed_models_help = ("Models this key may call, separated by commas or on separate lines; empty means every "
                           "model its tenant may call.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "response_cache" in self.fields:
            self.fields["response_cache"].required = False  # left out of a submission: the key keeps its choice

    def clean_response_cache(self) -> str:
        return self.cleaned_data.get("response_cache") or self.instance.response_cache

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        # On the tenant page "tenant" is the tenant as this same form submission changes it.
        tenant = cleaned.get("tenant") or getattr(self.instance, "tenant", None)
        # What issuing would refuse is a form error here: the key is issued after the form is saved.
        try:
            if isinstance(tenant, Tenant):
                services.check_allowed_models(tenant=tenant, allowed_models=self.added_models())
            if self.instance.pk is None:
                pepper.require_current()
        except ValidationError as e:
            self.add_error(None, e)
        project = cleaned.get("project")
        if project is not None and isinstance(tenant, Tenant) and project.tenant_id != tenant.pk:
            self.add_error("project", "The project must be one of the key's tenant's projects.")
        expires_at = cleaned.get("expires_at")
        if self.instance.pk is None and expires_at is not None and expires_at <= timezone.now():
            self.add_error("expires_at", "The expiry time must be in the future.")
        return cleaned


def show_new_key(request: HttpRequest, key: ApiKey, secret: str) -> None:
    # Messages use cookie storage (settings.MESSAGE_STORAGE), so the plaintext never reaches the database.
    messages.warning(request, f"New key for {key.tenant} “{key.name}”: {secret} — copy it now, it will not be shown again.")


def issue_drafted(request: HttpRequest, draft: ApiKey, *, tenant: Tenant) -> ApiKey:
    """Issue a key with the fields an admin form filled in, and show its plaintext once. Returns the new row."""
    created, secret = services.issue_key(
        tenant=tenant,
        name=draft.name,
        created_by=request.user,
        expires_at=draft.expires_at,
        allowed_models=draft.allowed_models,
        project=draft.project,
        limits=keys.Limits(**{name: getattr(draft, name) for name in LIMITS}),
    )
    show_new_key(request, created, secret)
    return created


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    form = ApiKeyForm
    extra = 0
    can_delete = False
    fields = ["name", "masked", "key_status", "expires_at", "allowed_models", "created_at", "last_used_at"]
    readonly_fields = ["masked", "key_status", "created_at", "last_used_at"]
    ordering = ["-created_at"]
    show_change_link = True

    @admin.display(description="status")
    def key_status(self, key: ApiKey) -> str:
        return key.status() if key.pk else "new"


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    actions = [send_test_alert]
    list_display = ["name", "slug", "timezone", "is_active", "batch_tier", "created_at"]
    list_filter = ["is_active", "batch_tier"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["created_at", "spend_last_30_days", "alert_webhook_secret"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    fieldsets = [
        (None, {"fields": ["name", "slug", "timezone", "is_active", "created_at", "spend_last_30_days"]}),
        ("Alerts", {"fields": ["contact_emails", "alert_webhook_url", "alert_webhook_secret"],
                    "description": "Budget alerts and key expiry notices go to the contacts; budget alerts also to "
                                   "the webhook, signed with its secret (see the README)."}),
        ("Models", {"fields": ["allowed_models"]}),
        ("Rate limits", {"fields": LIMITS, "description": LIMITS_HELP}),
        ("Batches", {"fields": ["batch_tier"],
                     "description": "The tier picks the Celery queue that runs this tenant's batches."}),
    ]

    @admin.display(description="spend, last 30 days")
    def spend_last_30_days(self, tenant: Tenant) -> str:
        return spend_chart(tenant) if tenant.pk else "—"
    inlines = [MembershipInline, ApiKeyInline, BudgetInline]
    show_full_result_count = False

    def save_formset(self, request: HttpRequest, form: ModelForm, formset: BaseInlineFormSet, change: bool) -> None:
        if formset.model is not ApiKey:
            super().save_formset(request, form, formset, change)
            return
        for key in formset.save(commit=False):
            if key.pk is None:
                issue_drafted(request, key, tenant=form.instance)
            else:
                key.save()
                keys.forget(key.prefix)


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        now = timezone.now()
        if self.value() == "active":
            return queryset.active(now)  # type: ignore[attr-defined]
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ["masked", "name", "tenant", "project", "key_status", "created_at", "expires_at", "last_used_at"]
    list_select_related = ["tenant", "project"]
    list_filter = [KeyStatusFilter]
    search_fields = ["=prefix", "name", "tenant__slug", "tenant__name"]
    autocomplete_fields = ["tenant"]
    actions = ["revoke_selected", "rotate_selected"]
    ordering = ["-created_at"]
    show_full_result_count = False
    readonly_fields = ["masked", "created_by", "created_at", "last_used_at", "revoked_at", "rotated_from"]
    inlines = [KeyBudgetInline]

    def get_fieldsets(self, request: HttpRequest, obj: ApiKey | None = None) -> list[tuple[str | None, dict[str, Any]]]:
        return [(None, {"fields": self.get_fields(request, obj)}),
                ("Rate limits", {"fields": LIMITS, "description": LIMITS_HELP})]

    def get_inlines(self, request: HttpRequest, obj: ApiKey | None) -> list[type[admin.options.InlineModelAdmin]]:
        return list(self.inlines) if obj else []  # budgets go on a key once it is issued

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return ["tenant", "name", "project", "expires_at", "allowed_models", "response_cache"]
        return ["tenant", "name", "project", "masked", "expires_at", "allowed_models", "response_cache",
                *self.readonly_fields[1:]]

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        if "project" in form.base_fields:
            # An issued key's tenant is fixed: offer only its projects. A new key's are checked against its tenant.
            field = form.base_fields["project"]
            field.queryset = (Project.objects.filter(tenant=obj.tenant) if obj else Project.objects.all()).select_related("tenant")
            field.label_from_instance = lambda project: f"{project.tenant} / {project}"
        return form

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return [*self.readonly_fields, "tenant"] if obj else []

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False  # usage rows point at keys: revoke instead

    @admin.display(description="status")
    def key_status(self, key: ApiKey) -> str:
        return key.status()

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ApiKey], search_term: str
    ) -> tuple[QuerySet[ApiKey], bool]:
        # A whole pasted key finds its row by prefix; the secret part is never compared here.
        prefix = search_term.strip().removeprefix("tg-").split("-")[0]
        if search_term.strip().startswith("tg-") and prefix:
            return queryset.filter(Q(prefix=prefix)), False
        return super().get_search_results(request, queryset, search_term)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            keys.forget(obj.prefix)
            return
        created = issue_drafted(request, obj, tenant=obj.tenant)
        obj.pk, obj.prefix, obj.created_at = created.pk, created.prefix, created.created_at

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            try:
                services.revoke_key(key=key)
                revoked += 1
            except services.KeyNotActive:
                pass
        self.message_user(request, f"Revoked {revoked} key(s).")

    @admin.action(description="Rotate selected keys (revoke and issue a replacement)")
    def rotate_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset.select_related("tenant"):
            try:
                created, secret = services.rotate_key(key=key, created_by=request.user)
            except (services.KeyNotActive, ValidationError) as e:
                self.message_user(request, f"{key.masked} was not rotated: {'; '.join(_messages(e))}", messages.ERROR)
                continue
            show_new_key(request, created, secret)


def _messages(error: Exception) -> list[str]:
    return error.messages if isinstance(error, ValidationError) else [str(error)]


@admin.register(ManagementToken)
class ManagementTokenAdmin(admin.ModelAdmin):
    """Tokens for the management API. Adding one shows its plaintext once; a token is revoked, never edited."""

    list_display = ["name", "user", "masked", "created_at", "last_used_at", "revoked_at"]
    list_select_related = ["user"]
    search_fields = ["name", "prefix", "user__username"]
    autocomplete_fields = ["user"]
    fields = ["user", "name"]
    actions = ["revoke_selected"]

    @admin.display(description="token")
    def masked(self, token: ManagementToken) -> str:
        return f"tgm-{token.prefix}-…"

    def has_change_permission(self, request: HttpRequest, obj: ManagementToken | None = None) -> bool:
        return obj is None and super().has_change_permission(request)

    def save_model(self, request: HttpRequest, obj: ManagementToken, form: ModelForm, change: bool) -> None:
        token, plaintext = services.issue_management_token(user=obj.user, name=obj.name)
        obj.pk, obj.prefix, obj.digest = token.pk, token.prefix, token.digest
        obj._state.adding = False
        messages.warning(request, f"New management token “{token.name}” for {token.user}: {plaintext} "
                                  "— copy it now, it will not be shown again.")

    @admin.action(description="Revoke the selected tokens")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ManagementToken]) -> None:
        now = timezone.now()
        count = sum(services.revoke_management_token(token=token, now=now) for token in queryset)
        messages.success(request, f"Revoked {count} tokens.")
