"""The ops console's projects: a tenant's projects and their owners, who must be members of the tenant."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from . import projects
from .models import Project, Tenant


class ProjectForm(forms.ModelForm):
    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        tenant = cleaned.get("tenant") or getattr(self.instance, "tenant", None)
        if isinstance(tenant, Tenant) and "owners" in cleaned:
            try:
                projects.check_owners(tenant=tenant, owners=cleaned["owners"])
            except ValidationError as e:
                self.add_error("owners", e.message_dict["owners"])
        return cleaned


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    """A tenant's projects. Its keys are put in one on the key's page; deleting a project leaves them in none."""

    form = ProjectForm
    list_display = ["name", "slug", "tenant", "created_at"]
    list_select_related = ["tenant"]
    list_filter = ["tenant"]
    search_fields = ["name", "slug", "tenant__slug", "tenant__name"]
    autocomplete_fields = ["tenant"]
    filter_horizontal = ["owners"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["created_at"]

    def get_form(self, request: HttpRequest, obj: Project | None = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        if "owners" in form.base_fields:
            # Owners are members of the tenant: an existing project offers its tenant's members, a new one anyone
            # with a membership (the form checks them against the tenant chosen).
            users = form.base_fields["owners"].queryset
            form.base_fields["owners"].queryset = (
                projects.members_of(obj.tenant) if obj else users.filter(memberships__isnull=False).distinct())
        return form

    def get_readonly_fields(self, request: HttpRequest, obj: Project | None = None) -> list[str]:
        return [*self.readonly_fields, "tenant"] if obj else list(self.readonly_fields)

    def delete_model(self, request: HttpRequest, obj: Project) -> None:
        projects.delete_project(project=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        for project in queryset:
            projects.delete_project(project=project)
