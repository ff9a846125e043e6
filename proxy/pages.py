"""The playground and live usage pages. The playground's chat goes through the same /v1 path as any request."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render

from accounts import services
from accounts.keys import Caller, load_record
from accounts.models import ApiKey
from accounts.tenancy import current_membership, tenant_page

from . import routing
from .errors import AuthenticationFailed, MethodNotAllowed, PermissionDenied
from .providers.base import CHAT
from .views import relay


def playground_key(membership: object) -> ApiKey:
    """The member's own key for the playground, issued on first use; its plaintext is never needed or shown."""
    tenant, user = membership.tenant, membership.user  # type: ignore[attr-defined]
    name = f"Playground: {user.get_username()}"
    key = ApiKey.objects.for_tenant(tenant).active().filter(name=name, created_by=user).first()
    if key is None:
        key, _ = services.issue_key(tenant=tenant, name=name, created_by=user)
    return key


def playground_caller(request: HttpRequest) -> Caller | None:
    membership = current_membership(request)
    if membership is None:
        return None
    record = load_record(playground_key(membership).prefix)
    return record.caller if record is not None else None


@tenant_page()
def playground(request: HttpRequest) -> HttpResponse:
    caller = playground_caller(request)
    routed = routing.load_table()
    # Only what /v1 would admit for this member's playground key: the tenant's allow-list, narrowed by the key's.
    models = [name for name in routed.models if caller is not None and caller.may_use(*routed.names_of(name))]
    return render(request, "pages/playground.html", {"title": "Playground", "models": sorted(models)})


async def playground_chat(request: HttpRequest) -> HttpResponseBase:
    """POST an OpenAI chat body; the answer streams back as Server-Sent Events, metered on the member's playground key."""
    user = await request.auser()
    if not user.is_authenticated:
        return AuthenticationFailed("Sign in to use the playground.").response()
    if request.method != "POST":
        return MethodNotAllowed("Use POST.").response()
    caller = await sync_to_async(playground_caller)(request)
    if caller is None:
        return PermissionDenied("You are not a member of any tenant.").response()
    return await relay(request, CHAT, caller=caller)


@tenant_page()
def live(request: HttpRequest) -> HttpResponse:
    names = dict(ApiKey.objects.for_tenant(request.tenant).values_list("pk", "name"))  # type: ignore[attr-defined]
    return render(request, "pages/live.html", {"title": "Live usage", "key_names": {str(k): v for k, v in names.items()}})
