from __future__ import annotations

import zoneinfo

from django import forms
from django.apps import apps
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django.utils.text import capfirst

from accounts.tenancy import tenant_page

from . import export, services

PAGE = 50


class Older(forms.Form):
    before = forms.IntegerField(required=False, min_value=1, max_value=2**63 - 1, widget=forms.HiddenInput)


def members_of(request: HttpRequest) -> frozenset[int]:
    return frozenset(request.tenant.memberships.values_list("user_id", flat=True))  # type: ignore[attr-defined]


def shown(row: export.Row) -> dict[str, object]:
    changes = []
    for field, values in row["changes"].items():
        if isinstance(values, dict):  # a many-to-many change: {"type": "m2m", "operation": ..., "objects": [...]}
            sign = "+" if values.get("operation") == "add" else "−"
            changes.append((field, f"{sign} {', '.join(map(str, values.get('objects', [])))}"))
        elif isinstance(values, list) and len(values) == 2:
            changes.append((field, f"{values[0]} → {values[1]}"))
    return {**row, "at": f"{row['time'][:10]} {row['time'][11:19]}", "fields": changes, "kind": kind(row["model"])}


def kind(label: str) -> str:
    try:
        return capfirst(str(apps.get_model(label)._meta.verbose_name))
    except LookupError:  # a model removed since the entry was written
        return label


@tenant_page(owner=True)
def activity(request: HttpRequest) -> HttpResponse:
    form = Older(request.GET)
    if not form.is_valid():
        return render(request, "pages/activity.html", {"title": "Activity", "form": form, "rows": []}, status=400)
    entries = services.tenant_entries(request.tenant.pk).order_by("-pk")  # type: ignore[attr-defined]
    if before := form.cleaned_data["before"]:
        entries = entries.filter(pk__lt=before)  # keyset pagination: no OFFSET, no COUNT
    page = list(export.for_export(entries)[:PAGE + 1])
    zone = zoneinfo.ZoneInfo(request.tenant.timezone)  # type: ignore[attr-defined]
    members = members_of(request)
    return render(request, "pages/activity.html", {
        "title": "Activity", "form": form,
        "rows": [shown(export.row(entry, zone=zone, members=members)) for entry in page[:PAGE]],
        "older": page[PAGE - 1].pk if len(page) > PAGE else None, "newest": bool(before),
    })


@tenant_page(owner=True)
def activity_export_csv(request: HttpRequest) -> HttpResponseBase:
    """Every entry of the current tenant as CSV, newest first, streamed."""
    tenant = request.tenant  # type: ignore[attr-defined]
    return export.csv_response(request, services.tenant_entries(tenant.pk), filename=f"{tenant.slug}-activity.csv",
                               zone=zoneinfo.ZoneInfo(tenant.timezone), members=members_of(request))


@tenant_page(owner=True)
def activity_export_json(request: HttpRequest) -> HttpResponseBase:
    """Every entry of the current tenant as a JSON array, newest first, streamed."""
    tenant = request.tenant  # type: ignore[attr-defined]
    return export.json_response(request, services.tenant_entries(tenant.pk), filename=f"{tenant.slug}-activity.json",
                                zone=zoneinfo.ZoneInfo(tenant.timezone), members=members_of(request))
