"""Self-service pages for a tenant's members: API keys, and switching tenant."""

from __future__ import annotations

from datetime import datetime, time

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from . import services
from .models import ApiKey, Membership, Project, Tenant
from .tenancy import SESSION_KEY, tenant_page


class KeyForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="What uses it, e.g. \"backend\" or \"ci\".")
    expires_on = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}),
                                 help_text="Optional. The key stops working at the end of this day, in your time zone.")
    allowed_models = forms.CharField(required=False, help_text="Optional. Comma-separated model names; empty allows all.")
    project = forms.ModelChoiceField(queryset=Project.objects.none(), required=False, empty_label="No project",
                                     help_text="Optional. The key's requests count toward this project.")

    def models(self) -> list[str]:
        return [m.strip() for m in self.cleaned_data["allowed_models"].split(",") if m.strip()]

    def narrow_to(self, tenant: Tenant, *, owner: bool) -> None:
        """Say in the form which models the operator allows the tenant: a key can only narrow that list. Only owners
        choose a project, among the tenant's."""
        if owner:
            self.fields["project"].queryset = Project.objects.filter(tenant=tenant).order_by("name")  # type: ignore[attr-defined]
        else:
            del self.fields["project"]
        if tenant.allowed_models:
            allowed = ", ".join(tenant.allowed_models)
            self.fields["allowed_models"].help_text = (
                f"Optional. Comma-separated model names among those your tenant may use ({allowed}); empty allows all "
                "of these.")


def end_of_day(day: object, tenant: Tenant) -> datetime:
    import zoneinfo

    return datetime.combine(day, time(23, 59, 59), tzinfo=zoneinfo.ZoneInfo(tenant.timezone))  # type: ignore[arg-type]


def snippet(secret: str) -> str:
    return (f'from openai import OpenAI\n\nclient = OpenAI(base_url="{settings.TOLLGATE_PUBLIC_URL}/v1", '
            f'api_key="{secret}")\nprint(client.chat.completions.create(model="demo", '
            f'messages=[{{"role": "user", "content": "Hello!"}}]).choices[0].message.content)')


def shown_once(request: HttpRequest, key: ApiKey, secret: str, what: str) -> HttpResponse:
    response = render(request, "pages/key_created.html",
                      {"title": what, "key": key, "secret": secret, "snippet": snippet(secret)})
    response["Cache-Control"] = "no-store"  # the plaintext must not be kept by a browser or proxy cache
    return response


@tenant_page()
def keys(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant  # type: ignore[attr-defined]
    form = KeyForm(request.POST or None)
    form.narrow_to(tenant, owner=request.is_owner)  # type: ignore[attr-defined]
    if request.method == "POST" and form.is_valid():
        expires = form.cleaned_data["expires_on"]
        try:
            key, secret = services.issue_key(tenant=tenant, name=form.cleaned_data["name"], created_by=request.user,
                                             expires_at=end_of_day(expires, tenant) if expires else None,
                                             allowed_models=form.models(),
                                             project=form.cleaned_data.get("project"))
        except ValidationError as e:
            form.add_error(None, e)
        else:
            return shown_once(request, key, secret, "Key created")
    rows = ApiKey.objects.for_tenant(tenant).select_related("project").order_by("-created_at")
    now = timezone.now()
    return render(request, "pages/keys.html", {"title": "API keys", "form": form, "now": now,
                                               "keys": [(key, key.status(now)) for key in rows],
                                               "projects": list(Project.objects.filter(tenant=tenant).order_by("name"))})


@tenant_page()
@require_POST
def revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_or_404(ApiKey.objects.for_tenant(request.tenant), pk=key_id)  # type: ignore[attr-defined]
    try:
        services.revoke_key(key=key)
    except services.KeyNotActive:
        messages.error(request, f"{key.masked} was already revoked.")
    else:
        messages.success(request, f"{key.name} ({key.masked}) is revoked; requests with it are refused from now on.")
    return redirect("keys")


@tenant_page()
@require_POST
def rotate(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_or_404(ApiKey.objects.for_tenant(request.tenant), pk=key_id)  # type: ignore[attr-defined]
    try:
        new, secret = services.rotate_key(key=key, created_by=request.user)
    except services.KeyNotActive as e:
        messages.error(request, f"{e}" if key.revoked_at is None else f"{key.masked} is revoked; issue a new key instead.")
        return redirect("keys")
    except ValidationError as e:  # e.g. this process runs under another pepper than the keys were issued under
        messages.error(request, " ".join(e.messages))
        return redirect("keys")
    return shown_once(request, new, secret, "Key rotated")


@login_required
@require_POST
def switch_tenant(request: HttpRequest) -> HttpResponse:
    membership = get_object_or_404(Membership, user=request.user, tenant__slug=request.POST.get("tenant", ""),
                                   tenant__is_active=True)
    request.session[SESSION_KEY] = membership.tenant_id
    return redirect("dashboard")
