"""The audit log in the ops console: read-only (no add, change or delete), filterable and exportable."""

from __future__ import annotations

from typing import Any

from auditlog.admin import LogEntryAdmin
from auditlog.filters import ResourceTypeFilter
from auditlog.models import LogEntry
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone

from accounts.models import Tenant

from . import context, export

admin.site.unregister(LogEntry)


class SourceFilter(admin.SimpleListFilter):
    title = "source"
    parameter_name = "source"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(source, source) for source in context.SOURCES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[LogEntry]) -> QuerySet[LogEntry]:
        return queryset.filter(additional_data__source=self.value()) if self.value() else queryset


class TenantFilter(admin.SimpleListFilter):
    title = "tenant"
    parameter_name = "tenant"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(pk), name) for pk, name in Tenant.objects.values_list("pk", "name")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[LogEntry]) -> QuerySet[LogEntry]:
        value = self.value()
        if not value:
            return queryset
        if not (value.isdigit() and int(value) < 2**63):  # no tenant has such an id (and SQLite cannot bind it)
            return queryset.none()
        return queryset.filter(additional_data__tenant=int(value))


@admin.register(LogEntry)
class AuditEntryAdmin(LogEntryAdmin):
    list_display = ["created", "resource_url", "action", "verb", "msg_short", "user_url", "source", "remote_addr"]
    list_filter = ["action", ResourceTypeFilter, SourceFilter, TenantFilter,
                   ("actor", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["object_repr", "object_pk", "changes", "actor__username", "actor_email", "remote_addr"]
    readonly_fields = [*LogEntryAdmin.readonly_fields, "source", "verb", "remote_addr", "tenant"]
    fieldsets = [
        (None, {"fields": ["created", "user_url", "source", "remote_addr", "resource_url", "tenant"]}),
        ("Changes", {"fields": ["action", "verb", "msg"]}),
    ]
    actions = ["export_csv", "export_json"]

    @admin.display(description="source")
    def source(self, entry: LogEntry) -> str:
        return str((entry.additional_data or {}).get("source", ""))

    @admin.display(description="verb")
    def verb(self, entry: LogEntry) -> str:
        return str((entry.additional_data or {}).get("verb", ""))

    @admin.display(description="tenant")
    def tenant(self, entry: LogEntry) -> str:
        return str((entry.additional_data or {}).get("tenant", "—"))

    # Append-only: entries leave only through retention (audit.tasks.prune_entries), never from the console.
    def has_delete_permission(self, request: HttpRequest, obj: LogEntry | None = None) -> bool:
        return False

    def stamp(self) -> str:
        return timezone.now().strftime("%Y%m%d-%H%M%S")

    @admin.action(description="Export the selected entries as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[LogEntry]) -> StreamingHttpResponse:
        return export.csv_response(request, queryset.order_by("-pk"), filename=f"audit-{self.stamp()}.csv")

    @admin.action(description="Export the selected entries as JSON")
    def export_json(self, request: HttpRequest, queryset: QuerySet[LogEntry]) -> StreamingHttpResponse:
        return export.json_response(request, queryset.order_by("-pk"), filename=f"audit-{self.stamp()}.json")
