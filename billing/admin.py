from __future__ import annotations

import re
import uuid
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.http import HttpRequest
from django.utils.functional import cached_property

from accounts.models import ApiKey, Tenant

from .models import UsageRecord


class LedgerPaginator(Paginator):
    """Never COUNT(*) the ledger: on millions of rows that scan is slower than the page itself.

    Probe one row past the next few pages instead, so the changelist can still offer "next".
    """

    @cached_property
    def count(self) -> int:
        page = int(getattr(self, "_current_page", 1))
        probe = self.per_page * (page + 5)
        return len(self.object_list[:probe].values_list("pk", flat=True))


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = [
        "created_at", "tenant", "key", "public_model", "provider", "stream", "prompt_tokens", "completion_tokens",
        "usage_source", "end_reason", "status_code", "latency_ms", "ttfb_ms",
    ]
    list_select_related = ["tenant", "key"]
    list_filter = ["end_reason", "usage_source", "stream", "endpoint"]
    search_fields = ["=request_id"]
    search_help_text = "A request id (x-request-id), a tenant slug, or an API key (its prefix or the whole key)."
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    paginator = LedgerPaginator
    show_full_result_count = False
    list_per_page = 100

    def get_paginator(self, request: HttpRequest, queryset: Any, per_page: int, orphans: int = 0,
                      allow_empty_first_page: bool = True) -> Paginator:
        paginator = super().get_paginator(request, queryset, per_page, orphans, allow_empty_first_page)
        try:
            paginator._current_page = max(int(request.GET.get("p", 1)), 1)  # type: ignore[attr-defined]
        except ValueError:
            pass
        return paginator

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        # Each kind of term goes to an index; a free-text search over the ledger would scan every row.
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(request_id=uuid.UUID(term)), False
        except ValueError:
            pass
        # Look the key or tenant up first: joined into the ledger query, an unknown one would make the
        # planner walk the whole created_at index looking for a match.
        prefix = term.removeprefix("tg-").split("-")[0]
        if re.fullmatch(r"[0-9a-f]{12}", prefix):
            key_id = ApiKey.objects.filter(prefix=prefix).values_list("pk", flat=True).first()
            return (queryset.filter(key_id=key_id) if key_id else queryset.none()), False
        tenant_id = Tenant.objects.filter(slug=term).values_list("pk", flat=True).first()
        return (queryset.filter(tenant_id=tenant_id) if tenant_id else queryset.none()), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the ledger is append-only and written by the gateway alone

    def has_change_permission(self, request: HttpRequest, obj: UsageRecord | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageRecord | None = None) -> bool:
        return False
