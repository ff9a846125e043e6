from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet, Sum
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseBase
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from accounts.models import ApiKey, Tenant

from . import alerts, charts, export, ledger_filters, tags
from .budget_admin import BudgetAdmin as BudgetAdmin  # registers the budget and budget alert admins
from .budget_admin import BudgetAlertAdmin as BudgetAlertAdmin
from .budget_admin import BudgetInline as BudgetInline
from .budget_admin import KeyBudgetInline as KeyBudgetInline
from .budget_admin import dollars as dollars
from .models import Price, UsageRecord, UsageRollup, picos_to_dollars

CENTS = Decimal("0.01")
MICRO = Decimal("0.000001")


def cost(picos: int, *, exact: bool = False) -> str:
    """A ledger cost: $1.50 for whole cents; else to the micro-dollar (half up), or every pico-dollar when exact.

    Rounded to the micro-dollar, a cost that is not zero but rounds to it shows as "<$0.000001".
    """
    amount = picos_to_dollars(abs(picos))
    if not exact:
        rounded = amount.quantize(MICRO, rounding=ROUND_HALF_UP)
        if picos and not rounded:
            return f"{'-' if picos < 0 else ''}<$0.000001"
        amount = rounded
    cents = amount.quantize(CENTS)
    return f"{'-' if picos < 0 else ''}${cents if cents == amount else f'{amount.normalize():f}'}"


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
        "usage_source", "end_reason", "status_code", "latency_ms", "ttfb_ms", "cost", "attributed_to",
    ]
    list_select_related = ["tenant", "key", "project"]
    list_filter = ["end_reason", "usage_source", "stream", "endpoint", "unpriced", *ledger_filters.LIST_FILTERS]
    search_fields = ["=request_id"]
    search_help_text = ("A request id (x-request-id), a tenant slug, an API key (its prefix or the whole key), "
                        "tag:<tag> or user:<end user>.")
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    paginator = LedgerPaginator
    show_full_result_count = False
    list_per_page = 100
    readonly_fields = ["gate_decision", "cost_in_dollars"]

    def get_fieldsets(self, request: HttpRequest, obj: UsageRecord | None = None) -> list[tuple[str | None, dict[str, Any]]]:
        fields = [name for name in self.get_fields(request, obj) if name not in ("gate", "gate_decision")]
        return [(None, {"fields": fields}), ("Why admitted or denied", {"fields": ["gate_decision"]})]

    @admin.display(description="project, tags, user")
    def attributed_to(self, record: UsageRecord) -> str:
        # One column for the three: the list stays within a laptop screen.
        parts = [record.project.slug if record.project_id and record.project else "",
                 " ".join(tags.parse_stored(record.tags)), f"user {record.end_user}" if record.end_user else ""]
        return " · ".join(part for part in parts if part) or "—"

    @admin.display(description="cost", ordering="cost_picos")
    def cost(self, record: UsageRecord) -> str:
        return cost(record.cost_picos)

    @admin.display(description="cost in dollars")
    def cost_in_dollars(self, record: UsageRecord) -> str:
        return cost(record.cost_picos, exact=True)

    @admin.display(description="gate")
    def gate_decision(self, record: UsageRecord) -> str:
        if not record.gate:
            return "Nothing was recorded."
        return format_html("<pre>{}</pre>", json.dumps(record.gate, indent=2, sort_keys=True))

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
        if (attributed := ledger_filters.search(queryset, term)) is not None:
            return attributed, False
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


class PriceForm(ModelForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "batch_discount_percent" in self.fields:
            self.fields["batch_discount_percent"].required = False  # left empty: the price keeps its discount

    def clean_batch_discount_percent(self) -> Decimal:
        value = self.cleaned_data.get("batch_discount_percent")
        return self.instance.batch_discount_percent if value is None else value


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    form = PriceForm
    list_display = ["model", "provider", "effective_from", "input_per_million", "output_per_million",
                    "cached_input_per_million", "per_request"]
    list_select_related = ["provider"]
    list_filter = ["provider"]
    search_fields = ["model"]
    ordering = ["-effective_from", "model"]
    fields = ["model", "provider", "effective_from", "input_per_million", "output_per_million",
              "cached_input_per_million", "per_request", "batch_discount_percent", "note", "history"]
    readonly_fields = ["history"]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if request.method == "GET":
            warn_unpriced(request)
        return super().changelist_view(request, extra_context)

    @admin.display(description="other prices of this model")
    def history(self, price: Price) -> str:
        if price.pk is None:
            return "—"
        others = list(Price.objects.filter(model=price.model, provider=price.provider_id).exclude(pk=price.pk)
                      .order_by("-effective_from"))
        if not others:
            return "None: this is the only one."
        items = format_html_join("", '<li><a href="{}">from {}</a> ({}): {}</li>', (
            (reverse("admin:billing_price_change", args=[other.pk]), other.effective_from,
             "newer" if other.effective_from > price.effective_from else "older", amounts(other))
            for other in others
        ))
        return format_html("<ul>{}</ul>", items)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        # Usage records protect the prices they were charged at. Django would list every one of them on
        # the confirmation page, and a price can have millions: ask whether one exists instead.
        used = [price for price in objs if UsageRecord.objects.filter(price=price).exists()]
        if used:
            return [], {}, set(), [f"{price}: usage records were charged at it. Add a newer price instead." for price in used]
        return super().get_deleted_objects(objs, request)


def amounts(price: Price) -> str:
    cached = "same as input" if price.cached_input_per_million is None else plain(price.cached_input_per_million)
    return (f"input {plain(price.input_per_million)}, output {plain(price.output_per_million)}, cached {cached}, "
            f"per request {plain(price.per_request)}")


def plain(amount: Decimal) -> str:
    return f"{amount.normalize():f}"


def warn_unpriced(request: HttpRequest) -> None:
    since = timezone.now() - timedelta(days=7)
    unpriced = UsageRecord.objects.filter(unpriced=True, created_at__gte=since)
    models = list(unpriced.values_list("public_model", flat=True).distinct()[:10])
    if models:
        messages.warning(request, f"No price for {', '.join(models)}: requests in the last 7 days were recorded at "
                                  "no cost. Add a price for each.")


class GranularityFilter(admin.SimpleListFilter):
    """Days by default: hours and days of the same usage must never be summed together."""

    title = "granularity"
    parameter_name = "granularity"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("day", "Days"), ("hour", "Hours")]

    def choices(self, changelist: Any) -> Any:
        for value, label in self.lookup_choices:
            yield {"selected": (self.value() or "day") == value, "display": label,
                   "query_string": changelist.get_query_string({self.parameter_name: value})}

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRollup]) -> QuerySet[UsageRollup]:
        return queryset.filter(granularity="hour" if self.value() == "hour" else "day")


ROLLUP_EXPORT_HEADER = ["granularity", "bucket", "tenant", "key", "model", "provider", "requests", "errors", "rejected",
                        "prompt_tokens", "completion_tokens", "cost_usd", "latency_p50_ms", "latency_p95_ms",
                        "latency_p99_ms", "ttfb_p50_ms", "ttfb_p95_ms"]
ROLLUP_EXPORT_FIELDS = ["granularity", "bucket", "tenant__slug", "key__name", "model", "provider", "requests", "errors",
                        "rejected", "prompt_tokens", "completion_tokens", "cost_picos", "latency_p50_ms",
                        "latency_p95_ms", "latency_p99_ms", "ttfb_p50_ms", "ttfb_p95_ms"]
# Named apart from the model's fields: an annotation may not share a field's name.
ROLLUP_SUMS = {"total_requests": Sum("requests"), "total_errors": Sum("errors"), "total_rejected": Sum("rejected"),
               "prompt": Sum("prompt_tokens"), "completion": Sum("completion_tokens"), "spent": Sum("cost_picos")}


def sums(row: dict[str, Any]) -> dict[str, Any]:
    return {"requests": row["total_requests"] or 0, "errors": row["total_errors"] or 0,
            "rejected": row["total_rejected"] or 0, "prompt": row["prompt"] or 0, "completion": row["completion"] or 0,
            "cost": cost(row["spent"] or 0)}


def percentiles(*values: int | None) -> str:
    return "—" if values[0] is None else " / ".join(str(value) for value in values)


@admin.register(UsageRollup)
class UsageRollupAdmin(admin.ModelAdmin):
    list_display = ["bucket", "tenant", "key", "model", "provider", "requests", "errors", "rejected", "prompt_tokens",
                    "completion_tokens", "cost", "latency", "first_byte"]
    list_select_related = ["tenant", "key"]
    list_filter = [GranularityFilter, ("tenant", admin.RelatedOnlyFieldListFilter), "provider", "model"]
    date_hierarchy = "bucket"
    ordering = ["-bucket", "tenant", "model", "provider"]
    list_per_page = 100

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageRollup]:
        return super().get_queryset(request).defer("sketch")  # a few KB per hour row, read only by the day rollups

    def get_urls(self) -> list[URLPattern]:
        export_view = self.admin_site.admin_view(self.export_view)
        return [path("export/", export_view, name="billing_usagerollup_export"), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            rollups = changelist.queryset
            response.context_data["totals"] = sums(rollups.aggregate(**ROLLUP_SUMS))
            per_model = rollups.values("model", "provider").annotate(**ROLLUP_SUMS).order_by("-spent", "model", "provider")
            response.context_data["by_model_provider"] = [
                {"model": row["model"], "provider": row["provider"], **sums(row)} for row in per_model[:50]]
        return response

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """What the changelist's filters select, every row of it, as a streamed CSV file."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            rollups = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("These filters are not valid: go back to the list and choose others.",
                                          content_type="text/plain")
        rows = rollups.select_related(None).values_list(*ROLLUP_EXPORT_FIELDS).iterator(chunk_size=export.CHUNK)

        def lines() -> Iterator[list[object]]:
            for granularity, bucket, *middle, picos, p50, p95, p99, ttfb50, ttfb95 in rows:
                yield [granularity, bucket.isoformat(), *middle, export.money(picos), p50, p95, p99, ttfb50, ttfb95]

        return export.csv_response(request, filename="usage-rollups.csv", header=ROLLUP_EXPORT_HEADER, rows=lines())

    @admin.display(description="cost", ordering="cost_picos")
    def cost(self, rollup: UsageRollup) -> str:
        return cost(rollup.cost_picos)

    # Percentiles share a column each, so the list still fits a laptop's screen.
    @admin.display(description="latency p50 / p95 / p99 ms", ordering="latency_p95_ms")
    def latency(self, rollup: UsageRollup) -> str:
        return percentiles(rollup.latency_p50_ms, rollup.latency_p95_ms, rollup.latency_p99_ms)

    @admin.display(description="first byte p50 / p95 ms", ordering="ttfb_p95_ms")
    def first_byte(self, rollup: UsageRollup) -> str:
        return percentiles(rollup.ttfb_p50_ms, rollup.ttfb_p95_ms)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # derived from the ledger by the rollup job

    def has_change_permission(self, request: HttpRequest, obj: UsageRollup | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageRollup | None = None) -> bool:
        return False


TEST_ALERTS_AT_ONCE = 20


@admin.action(description="Send a test alert to the selected tenants' contacts (and webhook)")
def send_test_alert(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
    """A tenant admin action: one clearly marked test alert per tenant, and a message saying where it went."""
    if queryset.count() > TEST_ALERTS_AT_ONCE:  # each waits on SMTP and a webhook within this one request
        modeladmin.message_user(request, f"Select at most {TEST_ALERTS_AT_ONCE} tenants to test at once.", messages.ERROR)
        return
    for tenant in queryset.order_by("name"):
        delivery = alerts.send_test_alert(tenant=tenant)
        level = messages.SUCCESS if delivery.ok and delivery.emailed else messages.WARNING
        modeladmin.message_user(request, f"Test alert for {tenant}: {delivery.summary()}.", level)


def spend_chart(tenant: Tenant, *, days: int = 30, today: Any = None) -> str:
    """The tenant's spend per UTC day over the last ``days`` days, as a small inline SVG bar chart."""
    points = charts.daily(tenant.pk, "cost_picos", days=days, today=today or timezone.now().date())
    total = cost(sum(picos for _, picos in points))
    chart = charts.bars(points, label=f"Spend per day, last {days} days: {total} in total", fmt=cost)
    return format_html("{}<div>{} in the last {} days (UTC days, from the rollups); highest day {}.</div>", chart, total,
                       days, cost(max((picos for _, picos in points), default=0)))
