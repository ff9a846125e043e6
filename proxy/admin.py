from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from .models import Deployment, ModelRoute, Provider


class ProviderForm(forms.ModelForm):
    base_url = forms.URLField(required=False, assume_scheme="https", help_text="Leave blank to use the preset's URL.")
    # Write-only: the stored key is never rendered back into the page.
    api_key = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted. Leave blank to keep the current key.",
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored key.")

    class Meta:
        model = Provider
        fields = ["name", "kind", "preset", "base_url", "api_key", "clear_api_key", "credential_env", "is_active"]

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
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ["name", "kind", "preset", "resolved_base_url", "credential_status", "is_active"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name"]

    @admin.display(description="API key")
    def credential_status(self, provider: Provider) -> str:
        if provider.credential_encrypted:
            return "stored (encrypted)"
        return f"from ${provider.credential_env}" if provider.credential_env else "none"


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 1
    fields = ["provider", "upstream_model", "weight", "is_active"]


@admin.register(ModelRoute)
class ModelRouteAdmin(admin.ModelAdmin):
    list_display = ["name", "aliases", "strip_prefix", "deployment_count", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["name"]
    fields = ["name", "aliases", "strip_prefix", "is_active", "created_at"]
    readonly_fields = ["created_at"]
    inlines = [DeploymentInline]

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).prefetch_related("deployments")

    @admin.display(description="deployments")
    def deployment_count(self, route: ModelRoute) -> int:
        return len(route.deployments.all())
