"""The ops console for files and batches: read-only rows (their lines and money belong to the workers and the
ledger), downloads of the files, a cancel action, and the queues' counts."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from proxy.admin import ReadOnly

from . import services, stats, storage
from .models import Batch, BatchLine, BatchPart, File


def file_link(row: File | None) -> str:
    if row is None:
        return "—"
    url = reverse("admin:batches_file_download", args=[row.pk])
    return format_html('<a href="{}" download>{}</a> ({} bytes)', url, row.filename, f"{row.bytes:,}")


@admin.register(File)
class FileAdmin(ReadOnly):
    list_display = ["public_id", "tenant", "purpose", "filename", "bytes", "created_at", "download"]
    list_filter = ["purpose", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["public_id", "filename", "tenant__slug"]
    fields = ["public_id", "tenant", "key", "purpose", "filename", "bytes", "storage_name", "created_at", "expires_at",
              "download"]
    readonly_fields = fields

    @admin.display(description="content")
    def download(self, row: File) -> str:
        return file_link(row)

    def get_urls(self) -> list[URLPattern]:
        download = self.admin_site.admin_view(self.download_view)
        return [path("<int:file_pk>/download/", download, name="batches_file_download"), *super().get_urls()]

    def download_view(self, request: HttpRequest, file_pk: int) -> FileResponse:
        if not self.has_view_permission(request):
            raise Http404("No such file.")
        row = File.objects.filter(pk=file_pk).first()
        if row is None:
            raise Http404("No such file.")
        return storage.download(row)


class PartInline(admin.TabularInline):
    model = BatchPart
    fields = ["number", "first_line", "last_line", "state", "worker", "lease_expires_at", "sent_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.action(description="Cancel the selected batches", permissions=["cancel"])
def cancel_batches(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
    cancelled, refused = [], []
    for batch in queryset:
        try:
            services.cancel_batch(tenant_id=batch.tenant_id, batch_id=batch.public_id)
            cancelled.append(batch.public_id)
        except services.Conflict as e:
            refused.append(f"{batch.public_id}: {e.message}")
    if cancelled:
        messages.success(request, f"Cancelling {', '.join(cancelled)}: workers stop starting its lines within a second.")
    for reason in refused:
        messages.error(request, reason)


@admin.register(Batch)
class BatchAdmin(ReadOnly):
    list_display = ["public_id", "tenant", "status", "queue", "model", "progress", "completed", "failed", "total",
                    "created_at"]
    list_filter = ["status", "queue", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["public_id", "tenant__slug", "input_file_public_id"]
    date_hierarchy = "created_at"
    actions = [cancel_batches]
    inlines = [PartInline]
    fieldsets = [
        (None, {"fields": ["public_id", "tenant", "key", "endpoint", "model", "queue", "status", "metadata"]}),
        ("Lines", {"fields": ["total", "completed", "failed", "parts", "lines_by_state", "errors"]}),
        ("Files", {"fields": ["input", "output", "error"]}),
        ("Times", {"fields": ["created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at",
                              "failed_at", "expired_at", "cancelling_at", "cancelled_at"]}),
    ]
    readonly_fields = [name for _, group in fieldsets for name in group["fields"]]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Batch]:
        return super().get_queryset(request).select_related("tenant", "key", "input_file", "output_file", "error_file")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        # Whoever could change a batch, were batches editable, may cancel one.
        return bool(request.user.has_perm("batches.change_batch"))  # type: ignore[union-attr]

    @admin.display(description="ended")
    def progress(self, batch: Batch) -> str:
        if not batch.total:
            return "—"
        return f"{(batch.completed + batch.failed) * 100 // batch.total} %"

    @admin.display(description="claimed lines by state")
    def lines_by_state(self, batch: Batch) -> str:
        # One grouped count on the (batch, state) index.
        counts = dict(BatchLine.objects.filter(batch=batch).values_list("state").annotate(n=Count("id")).order_by())
        return ", ".join(f"{state}: {counts.get(state, 0):,}" for state in BatchLine.State.values)

    @admin.display(description="input file")
    def input(self, batch: Batch) -> str:
        return file_link(batch.input_file) if batch.input_file else batch.input_file_public_id

    @admin.display(description="output file")
    def output(self, batch: Batch) -> str:
        return file_link(batch.output_file)

    @admin.display(description="error file")
    def error(self, batch: Batch) -> str:
        return file_link(batch.error_file)

    def get_urls(self) -> list[URLPattern]:
        queues = self.admin_site.admin_view(self.queues_view)
        return [path("queues/", queues, name="batches_batch_queues"), *super().get_urls()]

    def queues_view(self, request: HttpRequest) -> HttpResponse:
        """Lines waiting, running, done and failed per queue and per tenant, and batches per status."""
        if not self.has_view_permission(request):
            raise Http404("No such page.")
        found = stats.queue_stats()
        tiers = stats.tiers()
        context = {
            **self.admin_site.each_context(request), "title": "Batch queues", "opts": self.opts,
            "statuses": stats.STATUSES,
            "queues": [{"queue": q, "tier": tiers.get(q), "counts": c} for q, c in found.queues.items()],
            "tenants": [{"queue": q, "tenant": t, "counts": c} for (q, t), c in found.tenants.items()],
        }
        return TemplateResponse(request, "admin/batches/queues.html", context)


@admin.register(BatchPart)
class BatchPartAdmin(ReadOnly):
    list_display = ["__str__", "tenant", "batch_link", "number", "first_line", "last_line", "state", "worker",
                    "lease_expires_at", "sent_at"]
    list_filter = ["state", "tenant"]
    list_select_related = ["tenant", "batch"]
    search_fields = ["batch__public_id", "worker"]
    fields = ["batch_link", "tenant", "number", "first_line", "last_line", "state", "worker", "lease_expires_at",
              "sent_at"]
    readonly_fields = fields

    @admin.display(description="batch")
    def batch_link(self, part: BatchPart) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:batches_batch_change", args=[part.batch_id]),
                           part.batch.public_id)

