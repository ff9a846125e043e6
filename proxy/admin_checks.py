"""The ops console's checks on upstreams: "Test connection" (proxy/probe.py) and the circuit breakers' state."""

from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from . import breaker, probe

MAX_TESTED = 10  # rows one "Test connection" action checks: each is a request that may take seconds
NOT_USAGE = "an operator's check: no ledger row, no budget"


class ConnectionTest:
    """Admin mixin: a "Test connection" action on the list and a button on the change page, both POST."""

    def check_connection(self, obj: Any) -> probe.Outcome:
        raise NotImplementedError

    def show_outcome(self, request: HttpRequest, obj: Model, outcome: probe.Outcome) -> None:
        level = messages.SUCCESS if outcome.ok else messages.ERROR
        self.message_user(request, f"{obj}: {outcome.summary} ({NOT_USAGE}).", level)  # type: ignore[attr-defined]

    @admin.action(description="Test connection (one cheap request; no ledger row, no budget)")
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset[:MAX_TESTED]:
            self.show_outcome(request, obj, self.check_connection(obj))
        if queryset.count() > MAX_TESTED:
            self.message_user(request, f"Only the first {MAX_TESTED} were tested.",  # type: ignore[attr-defined]
                              messages.WARNING)

    def get_urls(self) -> list[URLPattern]:
        urls: list[URLPattern] = super().get_urls()  # type: ignore[misc]
        view = self.admin_site.admin_view(self.test_connection_view)  # type: ignore[attr-defined]
        return [path("<path:object_id>/test-connection/", view, name=self._url_name("test_connection")), *urls]

    def _url_name(self, suffix: str) -> str:
        opts = self.opts  # type: ignore[attr-defined]
        return f"{opts.app_label}_{opts.model_name}_{suffix}"

    def test_connection_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self.get_object(request, unquote(object_id))  # type: ignore[attr-defined]
        if obj is None:
            raise Http404
        if not self.has_change_permission(request, obj):  # type: ignore[attr-defined]
            raise PermissionDenied
        self.show_outcome(request, obj, self.check_connection(obj))
        return redirect(reverse(f"admin:{self._url_name('change')}", args=[obj.pk]))

    @admin.display(description="connection")
    def connection_button(self, obj: Model | None) -> str:
        if obj is None or obj.pk is None:
            return "Save first, then test the connection."
        url = reverse(f"admin:{self._url_name('test_connection')}", args=[obj.pk])
        # Submits the change form's CSRF token to the test view; the form's other fields are ignored there.
        return format_html('<button type="submit" formaction="{}" formmethod="post" formnovalidate class="button">'
                           'Test connection</button> <span class="help">One cheap request; {}.</span>', url, NOT_USAGE)


def describe(status: breaker.Status, source: str) -> str:
    """How the admin shows a deployment's circuit breaker, e.g. "open: 5 failures, half-open at 12:00:30 UTC"."""
    where = "" if source == "redis" else " (this process)"
    if status.state == breaker.CLOSED:
        recent = f", {status.failures} recent failure{'' if status.failures == 1 else 's'}" if status.failures else ""
        return f"closed{recent}{where}"
    at = datetime.fromtimestamp(status.reopens_at or 0, tz=dt_timezone.utc).strftime("%H:%M:%S UTC")
    if status.state == breaker.OPEN:
        return f"open: {status.failures} failures, half-open at {at}{where}"
    return f"half-open since {at}: one request probes it{where}"


def reset_breakers(admin_view: Any, request: HttpRequest, queryset: QuerySet[Any]) -> None:
    """Close the circuit breakers of the chosen deployments everywhere."""
    ids = list(queryset.values_list("pk", flat=True))
    where = {breaker.reset(deployment_id) for deployment_id in ids}
    if where == {"everywhere"}:
        admin_view.message_user(request, f"Circuit breaker reset for {len(ids)} deployment(s); every process "
                                         "routes to them again within a second.", messages.SUCCESS)
    else:
        admin_view.message_user(request, "Redis cannot be reached: the circuit breakers were reset in this process "
                                         "only.", messages.WARNING)
