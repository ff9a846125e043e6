"""Self-service pages for a tenant's members: dashboard, budgets and alerts, request log and its CSV export."""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db.models import Count, QuerySet, Sum, TextField
from django.db.models.functions import Cast
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from accounts.models import ApiKey, Project, validate_email_list
from accounts.tenancy import tenant_page

from . import budgets, charts, export, tags
from .admin import cost, dollars
from .models import Budget, UsageRecord, UsageRollup, validate_thresholds

PAGE = 50
DAYS = 30
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9998, 12, 31)


def budget_rows(tenant: Any) -> list[dict[str, Any]]:
    rows = []
    for budget in Budget.objects.filter(tenant=tenant, is_active=True).select_related("tenant", "key"):
        state = budgets.status(budget)
        used = state.spent_micros + state.reserved_micros
        spent = cost(state.spent_picos) if state.spent_picos is not None else dollars(state.spent_micros)
        rows.append({"budget": budget, "state": state, "spent": spent,
                     "reserved": dollars(state.reserved_micros), "limit": dollars(state.limit_micros),
                     "remaining": dollars(max(state.remaining_micros, 0)),
                     "percent": min(100, used * 100 // state.limit_micros) if state.limit_micros else 100,
                     "over": used >= state.limit_micros})
    return rows


def tokens(value: int | None) -> str:
    return f"{value or 0:,}"


@tenant_page()
def dashboard(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    today = timezone.now().date()
    first = today - timedelta(days=DAYS - 1)
    window = UsageRollup.objects.filter(tenant=tenant, granularity="day", bucket__date__gte=first)
    totals = window.aggregate(requests=Sum("requests"), errors=Sum("errors"), rejected=Sum("rejected"),
                              prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cost=Sum("cost_picos"))
    spend = charts.daily(tenant.pk, "cost_picos", days=DAYS, today=today)
    token_points = [(day, p + c) for (day, p), (_, c) in zip(charts.daily(tenant.pk, "prompt_tokens", days=DAYS, today=today),
                                                              charts.daily(tenant.pk, "completion_tokens", days=DAYS, today=today))]
    sums = {"requests": Sum("requests"), "errors": Sum("errors"), "prompt": Sum("prompt_tokens"),
            "completion": Sum("completion_tokens"), "cost": Sum("cost_picos")}

    def breakdown(group: str, label: str, name: str) -> list[dict[str, Any]]:
        return [{"name": row[label] or name, "requests": row["requests"], "errors": row["errors"],
                 "tokens": tokens(row["prompt"] + row["completion"]), "cost": cost(row["cost"] or 0),
                 "chart": charts.bars(charts.daily(tenant.pk, "cost_picos", days=DAYS, today=today, **{group: row[group]}),
                                      label=f"Spend per day of {row[label] or name}", fmt=cost, height=24, step=4)}
                for row in window.values(*{group, label}).annotate(**sums).order_by("-cost")[:10]]

    latency = (UsageRollup.objects.filter(tenant=tenant, granularity="hour", bucket__gte=timezone.now() - timedelta(hours=24))
               .aggregate(p50=Sum("latency_p50_ms"), p95=Sum("latency_p95_ms"), windows=Count("id")))
    context = {
        "title": "Dashboard", "budgets": budget_rows(tenant), "days": DAYS,
        "requests": totals["requests"] or 0, "errors": totals["errors"] or 0, "rejected": totals["rejected"] or 0,
        "tokens": tokens((totals["prompt"] or 0) + (totals["completion"] or 0)), "cost": cost(totals["cost"] or 0),
        "error_rate": f"{(totals['errors'] or 0) * 100 / totals['requests']:.1f}%" if totals["requests"] else "—",
        "spend_chart": charts.bars(spend, label=f"Spend per day, last {DAYS} days", fmt=cost),
        "token_chart": charts.bars(token_points, label=f"Tokens per day, last {DAYS} days", fmt=tokens),
        "by_model": breakdown("model", "model", "(none)"), "by_key": breakdown("key_id", "key__name", "(no key)"),
        "by_project": (breakdown("project_id", "project__name", "(no project)")
                       if Project.objects.filter(tenant=tenant).exists() else None),
        # A typical hour: the mean of the last day's hourly percentiles.
        "latency_p50": latency["p50"] // latency["windows"] if latency["windows"] and latency["p50"] else None,
        "latency_p95": latency["p95"] // latency["windows"] if latency["windows"] and latency["p95"] else None,
    }
    return render(request, "pages/dashboard.html", context)


class AlertSettingsForm(forms.Form):
    contact_emails = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}),
                                     validators=[validate_email_list],
                                     help_text="Budget alerts and key expiry notices go to these addresses (comma or "
                                               "newline separated).")


class ThresholdForm(forms.Form):
    alert_thresholds = forms.CharField(max_length=64, validators=[validate_thresholds],
                                       help_text="Percentages, e.g. 50,80,100.")


class OwnBudgetForm(forms.ModelForm):
    """A budget an owner adds to their tenant: every applicable budget must admit a request, so it only restricts."""

    class Meta:
        model = Budget
        fields = ["name", "key", "project", "model", "tag", "end_user", "amount", "period", "hard", "alert_thresholds"]
        labels = {"end_user": "End user"}

    def __init__(self, *args: Any, tenant: Any, **kwargs: Any) -> None:
        from accounts.models import Project

        super().__init__(*args, **kwargs)
        self.instance.tenant, self.instance.set_by = tenant, Budget.SetBy.TENANT
        self.fields["key"].queryset = ApiKey.objects.for_tenant(tenant).active().order_by("name")  # type: ignore[attr-defined]
        self.fields["key"].empty_label = "Every key of the tenant"  # type: ignore[attr-defined]
        # Only the tenant's own projects can be chosen; another tenant's id posted anyway is "not one of the choices".
        self.fields["project"].queryset = Project.objects.filter(tenant=tenant).order_by("name")  # type: ignore[attr-defined]
        self.fields["project"].empty_label = "Every project"  # type: ignore[attr-defined]


OPERATORS_BUDGET = "{budget} was set by your Tollgate operator: you may change its alert thresholds, not remove it."


@tenant_page()
def budget_list(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    if request.method != "POST":
        return budgets_page(request, OwnBudgetForm(tenant=tenant))
    if not request.is_owner:  # type: ignore[attr-defined]
        return render(request, "pages/owners_only.html", status=403)
    if "remove" in request.POST:
        return remove_budget(request, request.POST["remove"])
    form = OwnBudgetForm(request.POST, tenant=tenant)
    if not form.is_valid():
        return budgets_page(request, form)
    budget = form.save()
    messages.success(request, f"{budget} added: it applies within seconds.")
    return redirect("budgets")


def remove_budget(request: HttpRequest, budget_id: str) -> HttpResponse:
    mine = Budget.objects.filter(tenant=request.tenant).select_related("tenant", "key")  # type: ignore[attr-defined]
    valid = budget_id.isascii() and budget_id.isdigit() and len(budget_id) < 19  # a bigint, not a 500
    budget = get_object_or_404(mine, pk=int(budget_id) if valid else 0)
    if budget.set_by == Budget.SetBy.OPERATOR:
        messages.error(request, OPERATORS_BUDGET.format(budget=budget))
        return budgets_page(request, OwnBudgetForm(tenant=request.tenant), status=403)  # type: ignore[attr-defined]
    label = str(budget)
    budget.delete()
    messages.success(request, f"{label} removed.")
    return redirect("budgets")


def budgets_page(request: HttpRequest, form: OwnBudgetForm, *, status: int = 200) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    contacts = AlertSettingsForm(initial={"contact_emails": tenant.contact_emails})
    rows = budget_rows(tenant)
    for row in rows:
        row["form"] = ThresholdForm(initial={"alert_thresholds": row["budget"].alert_thresholds},
                                    prefix=f"b{row['budget'].pk}")
    return render(request, "pages/budgets.html", {"title": "Budgets and alerts", "budgets": rows, "contacts": contacts,
                                                  "add_form": form}, status=status)


@tenant_page(owner=True)
def alert_contacts(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    form = AlertSettingsForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        tenant.contact_emails = form.cleaned_data["contact_emails"].strip()
        tenant.save(update_fields=["contact_emails"])
        messages.success(request, "Alert contacts saved.")
        return redirect("budgets")
    return render(request, "pages/form.html", {"title": "Alert contacts", "form": form})


@tenant_page(owner=True)
def budget_thresholds(request: HttpRequest, budget_id: int) -> HttpResponse:
    budget = get_object_or_404(Budget.objects.filter(tenant=request.tenant), pk=budget_id)  # type: ignore[attr-defined]
    form = ThresholdForm(request.POST or None, prefix=f"b{budget.pk}")
    if request.method == "POST" and form.is_valid():
        budget.alert_thresholds = form.cleaned_data["alert_thresholds"]
        budget.save(update_fields=["alert_thresholds"])
        messages.success(request, f"Alert thresholds of {budget} saved: {budget.alert_thresholds} %.")
        return redirect("budgets")
    return render(request, "pages/form.html", {"title": f"Alert thresholds of {budget}", "form": form})


class RequestFilters(forms.Form):
    key = forms.ModelChoiceField(queryset=ApiKey.objects.none(), required=False, empty_label="All keys")
    project = forms.ModelChoiceField(queryset=Project.objects.none(), required=False, empty_label="All projects")
    model = forms.CharField(required=False, max_length=200)
    tag = forms.CharField(required=False, max_length=tags.MAX_TAG_LENGTH, help_text="e.g. team:search")
    user = forms.CharField(required=False, max_length=tags.MAX_END_USER_LENGTH, label="End user")
    end_reason = forms.ChoiceField(required=False, choices=[("", "All outcomes"), *UsageRecord.EndReason.choices])
    # Bounded so a day and its time zone always make a datetime (year 1 or 9999 would overflow: a 500).
    day_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}),
                               validators=[MinValueValidator(FIRST_DAY), MaxValueValidator(LAST_DAY)])
    day_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}),
                             validators=[MinValueValidator(FIRST_DAY), MaxValueValidator(LAST_DAY)])
    before = forms.IntegerField(required=False, widget=forms.HiddenInput, min_value=1, max_value=2**63 - 1)

    def __init__(self, *args: Any, tenant: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tenant = tenant
        self.fields["key"].queryset = ApiKey.objects.for_tenant(tenant).order_by("name")  # type: ignore[attr-defined]
        self.fields["project"].queryset = Project.objects.filter(tenant=tenant).order_by("name")  # type: ignore[attr-defined]

    def clean_tag(self) -> str:
        tag: str = self.cleaned_data["tag"].strip()
        if tag and not tags.is_tag(tag):
            raise forms.ValidationError("A tag is letters, digits and _ . : = / @ + - characters, such as team:search.")
        return tag

    def requests(self, *, page: bool = True) -> QuerySet[UsageRecord]:
        """The tenant's ledger rows these filters select, newest first (the keyset cursor only when ``page``)."""
        rows = UsageRecord.objects.filter(tenant=self.tenant).order_by("-id")
        if not self.is_valid():
            return rows
        data, zone = self.cleaned_data, zoneinfo.ZoneInfo(self.tenant.timezone)
        if data["key"]:
            rows = rows.filter(key=data["key"])
        if data["project"]:
            rows = rows.filter(project=data["project"])
        if data["model"]:
            rows = rows.filter(public_model=data["model"].strip())
        if data["tag"]:
            rows = rows.filter(tags__contains=tags.needle(data["tag"]))
        if data["user"]:
            rows = rows.filter(end_user=data["user"])
        if data["end_reason"]:
            rows = rows.filter(end_reason=data["end_reason"])
        if data["day_from"]:
            rows = rows.filter(created_at__gte=datetime.combine(data["day_from"], time.min, tzinfo=zone))
        if data["day_to"]:
            rows = rows.filter(created_at__lt=datetime.combine(data["day_to"] + timedelta(days=1), time.min, tzinfo=zone))
        if page and data["before"]:
            rows = rows.filter(id__lt=data["before"])  # keyset pagination: no OFFSET, no COUNT
        return rows


@tenant_page()
def request_log(request: HttpRequest) -> HttpResponse:
    form = RequestFilters(request.GET or None, tenant=request.tenant)  # type: ignore[attr-defined]
    return requests_page(request, form, list(form.requests().select_related("key")[:PAGE + 1]))


def requests_page(request: HttpRequest, form: RequestFilters, page: list[UsageRecord], *, status: int = 200) -> HttpResponse:
    zone = zoneinfo.ZoneInfo(request.tenant.timezone)  # type: ignore[attr-defined]
    more = len(page) > PAGE
    page = page[:PAGE]
    older = request.GET.copy()
    older["before"] = str(page[-1].pk) if page else ""
    download = request.GET.copy()
    download.pop("before", None)  # the download holds every matching row, not this page's
    filtered = any(v for k, v in request.GET.items() if k != "before")
    return render(request, "pages/requests.html", {
        "title": "Requests", "form": form, "filtered": filtered,
        "rows": [{"row": r, "at": r.created_at.astimezone(zone), "cost": cost(r.cost_picos),
                  "prompt": tokens(r.prompt_tokens), "completion": tokens(r.completion_tokens),
                  "tags": tags.parse_stored(r.tags)} for r in page],
        "older": older.urlencode() if more else None, "newest": "before" in request.GET,
        "export": download.urlencode(),
    }, status=status)


EXPORT_HEADER = ["time", "request_id", "key", "endpoint", "model", "provider", "upstream_model", "stream", "outcome",
                 "error_code", "status", "prompt_tokens", "completion_tokens", "cached_tokens", "usage_source",
                 "latency_ms", "ttfb_ms", "cost_usd", "cache_write_tokens", "images", "project", "tags", "end_user"]
EXPORT_FIELDS = ["request_id", "key__name", "endpoint", "public_model", "provider", "upstream_model", "stream",
                 "end_reason", "error_code", "status_code", "prompt_tokens", "completion_tokens", "cached_tokens",
                 "usage_source", "latency_ms", "ttfb_ms", "cost_picos", "cache_write_tokens", "images", "project__name",
                 "tags", "end_user"]


@tenant_page()
def request_export(request: HttpRequest) -> HttpResponseBase:
    """The Requests page's rows as CSV: every row its filters select, of the current tenant only, streamed."""
    tenant = request.tenant  # type: ignore[attr-defined]
    form = RequestFilters(request.GET, tenant=tenant)
    if not form.is_valid():
        return requests_page(request, form, [], status=400)
    zone = zoneinfo.ZoneInfo(tenant.timezone)
    # The time is read as text: Django's loader for timestamps is a Python call per value, most of the time a
    # million-row export took.
    rows = (form.requests(page=False).annotate(at=Cast("created_at", TextField()))
            .values_list("at", *EXPORT_FIELDS).iterator(chunk_size=export.CHUNK))

    def lines() -> Iterator[list[object]]:
        # Columns added later go after cost_usd, so a reader of the older columns by position still reads them.
        for at, request_id, *middle, picos, writes, images, project, tagged, end_user in rows:
            yield [export.utc(at).astimezone(zone).isoformat(), request_id.hex, *middle, export.money(picos), writes,
                   images, project or "", tagged.strip(","), end_user]

    return export.csv_response(request, filename=f"{tenant.slug}-requests.csv", header=EXPORT_HEADER, rows=lines())
