"""Which tenant a signed-in user is looking at, for the self-service pages.

A user may belong to several tenants; the one in use is kept in the session and switched from the page header.
Every page reads its objects through ``request.tenant``, so another tenant's object is simply not found (404).
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from .models import Membership

SESSION_KEY = "tollgate_tenant"


def memberships(request: HttpRequest) -> list[Membership]:
    return list(Membership.objects.filter(user=request.user, tenant__is_active=True).select_related("tenant")
                .order_by("tenant__name"))


def current_membership(request: HttpRequest) -> Membership | None:
    mine = memberships(request)
    chosen = request.session.get(SESSION_KEY)
    return next((m for m in mine if m.tenant_id == chosen), mine[0] if mine else None)


def tenant_page(*, owner: bool = False) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """A page of the current tenant: signed in, a member (an owner if ``owner``), with request.tenant set."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            membership = current_membership(request)
            if membership is None:
                return render(request, "pages/no_tenant.html", status=403)
            request.membership, request.tenant = membership, membership.tenant  # type: ignore[attr-defined]
            request.is_owner = membership.role == Membership.Role.OWNER  # type: ignore[attr-defined]
            # Dates on the pages are in the tenant's time zone.
            timezone.activate(zoneinfo.ZoneInfo(membership.tenant.timezone))
            try:
                if owner and not request.is_owner:  # type: ignore[attr-defined]
                    return render(request, "pages/owners_only.html", status=403)
                return view(request, *args, **kwargs)
            finally:
                timezone.deactivate()

        return wrapped

    return decorate
