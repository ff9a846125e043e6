"""The Members page (owners invite, revoke invitations, remove members and change roles; anyone may leave) and the
page an invitation link opens."""

from __future__ import annotations

import logging

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, password_validation
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_ratelimit.decorators import ratelimit

from gateway_site.views import rate_limited

from . import invitations, sso
from .models import Invitation, Membership, Tenant
from .tenancy import SESSION_KEY, tenant_page

logger = logging.getLogger(__name__)

# Each invitation emails an address the owner chose: a bound per tenant keeps the outbox from becoming a relay.
INVITE_RATE = "50/h"
INVITE_GROUP = "tollgate.invitations"  # the Members page and the API count together


class InviteForm(forms.Form):
    email = forms.EmailField(max_length=254, help_text="The link goes to this address; only an account with it can join.")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class JoinForm(forms.Form):
    name = forms.CharField(max_length=150, required=False, help_text="Optional: how others see you.")
    password1 = forms.CharField(label="Password", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    password2 = forms.CharField(label="Password again", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    def __init__(self, *args: object, email: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.email = email

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        password = data.get("password1")
        if password and password != data.get("password2"):
            self.add_error("password2", "The two passwords differ.")
        elif password:
            try:
                password_validation.validate_password(str(password), User(username=self.email, email=self.email))
            except ValidationError as e:
                self.add_error("password1", e)
        return data


def tenant_of(request: HttpRequest) -> Tenant:
    return request.tenant  # type: ignore[attr-defined,no-any-return]


def members_page(request: HttpRequest, form: InviteForm, status: int = 200) -> HttpResponse:
    tenant = tenant_of(request)
    rows = Membership.objects.filter(tenant=tenant).select_related("user").order_by("role", "user__username")
    now = timezone.now()
    owner: bool = request.is_owner  # type: ignore[attr-defined]
    pending = invitations.pending(tenant, now).select_related("invited_by") if owner else []
    return render(request, "pages/members.html", {
        "title": "Members", "members": rows, "invitations": pending, "form": form, "roles": Membership.Role.choices},
        status=status)


@tenant_page()
def members(request: HttpRequest) -> HttpResponse:
    return members_page(request, InviteForm())


def invite_rate(group: str, request: HttpRequest) -> str:
    return INVITE_RATE


@tenant_page(owner=True)
@require_POST
@ratelimit(group=INVITE_GROUP, key=lambda group, request: str(tenant_of(request).pk), rate=invite_rate, method="POST",
           block=False)
def invite(request: HttpRequest) -> HttpResponse:
    if getattr(request, "limited", False):
        return rate_limited(request, retry_after=3600)
    form = InviteForm(request.POST)
    if form.is_valid():
        try:
            invitation = invitations.invite(tenant=tenant_of(request), email=form.cleaned_data["email"],
                                            role=form.cleaned_data["role"], invited_by=request.user,
                                            site=request.build_absolute_uri("/"))
        except ValidationError as e:
            for field, errors in e.error_dict.items() if hasattr(e, "error_dict") else [(None, e.messages)]:
                form.add_error(field if field in form.fields else None, errors)
        except OSError:  # smtplib's errors are OSErrors too
            logger.exception("invitation email could not be sent")
            form.add_error(None, "The invitation email could not be sent; nothing was saved. Try again later.")
        else:
            messages.success(request, f"Invitation sent to {invitation.email}. The link works for "
                                      f"{settings.TOLLGATE_INVITATION_DAYS} days.")
            return redirect("members")
    return members_page(request, form, status=400)


@tenant_page(owner=True)
@require_POST
def revoke_invitation(request: HttpRequest, invitation_id: int) -> HttpResponse:
    invitation = get_object_or_404(Invitation.objects.filter(tenant=tenant_of(request)), pk=invitation_id)
    try:
        invitations.revoke(invitation=invitation)
    except invitations.InvitationClosed:
        messages.error(request, f"The invitation to {invitation.email} was no longer pending.")
    else:
        messages.success(request, f"The invitation to {invitation.email} is withdrawn; its link no longer works.")
    return redirect("members")


@tenant_page(owner=True)
@require_POST
def remove_member(request: HttpRequest, membership_id: int) -> HttpResponse:
    membership = get_object_or_404(Membership.objects.filter(tenant=tenant_of(request)), pk=membership_id)
    try:
        invitations.remove_member(tenant=membership.tenant, user=membership.user, by=request.user)  # type: ignore[arg-type]
    except (invitations.LastOwner, invitations.NotAnOwner) as e:
        messages.error(request, str(e))
    except Membership.DoesNotExist:
        messages.error(request, f"{membership.user} was no longer a member.")
    else:
        messages.success(request, f"{membership.user} is no longer a member of {membership.tenant}.")
    return redirect("members")


@tenant_page(owner=True)
@require_POST
def change_role(request: HttpRequest, membership_id: int) -> HttpResponse:
    membership = get_object_or_404(Membership.objects.filter(tenant=tenant_of(request)), pk=membership_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose owner or member.")
        return redirect("members")
    try:
        changed = invitations.change_role(tenant=membership.tenant, user=membership.user,  # type: ignore[arg-type]
                                          role=form.cleaned_data["role"], by=request.user)
    except (invitations.LastOwner, invitations.NotAnOwner) as e:
        messages.error(request, str(e))
    except Membership.DoesNotExist:
        messages.error(request, f"{membership.user} was no longer a member.")
    else:
        messages.success(request, f"{changed.user} is now {'an owner' if changed.role == 'owner' else 'a member'}.")
    return redirect("members")


@tenant_page()
@require_POST
def leave_tenant(request: HttpRequest) -> HttpResponse:
    tenant = tenant_of(request)
    try:
        invitations.leave(tenant=tenant, user=request.user)  # type: ignore[arg-type]
    except invitations.LastOwner:
        messages.error(request, f"You are the last owner of {tenant}: make someone else an owner before you leave.")
        return redirect("members")
    except Membership.DoesNotExist:
        pass
    request.session.pop(SESSION_KEY, None)
    messages.success(request, f"You left {tenant}.")
    return redirect("dashboard")


def invitation_page(request: HttpRequest, invitation: Invitation | None, state: str, *, status: int = 200,
                    **context: object) -> HttpResponse:
    response = render(request, "pages/invitation.html", {
        "title": "Invitation", "invitation": invitation, "state": state,
        "login_url": f"{reverse('login')}?next={request.path}", **sso.login_context(), **context}, status=status)
    response["Cache-Control"] = "no-store"
    return response


def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """Accept an invitation: a signed-in user with the invited address joins; a new address sets a password."""
    try:
        found = invitations.invitation_from(token)
        if request.user.is_authenticated:
            return join_signed_in(request, found)
        return join_signed_out(request, found)
    except invitations.InvitationError as e:
        return invitation_page(request, None, "error", status=e.status, message=e.message)


def join_signed_in(request: HttpRequest, found: Invitation) -> HttpResponse:
    invitations.check_account(request.user, found)  # type: ignore[arg-type]
    if request.method != "POST":
        return invitation_page(request, found, "join")
    invitations.accept(invitation=found, user=request.user)  # type: ignore[arg-type]
    return joined(request, found)


def join_signed_out(request: HttpRequest, found: Invitation) -> HttpResponse:
    has_account = User.objects.filter(Q(email__iexact=found.email) | Q(username__iexact=found.email)).exists()
    # With password sign-in off, new accounts come from single sign-on: the invitee signs in there.
    if has_account or not getattr(settings, "TOLLGATE_PASSWORD_LOGIN", True):
        return invitation_page(request, found, "sign_in", has_account=has_account)
    form = JoinForm(request.POST or None, email=found.email)
    if request.method == "POST" and form.is_valid():
        try:
            user = invitations.create_invitee(invitation=found, name=form.cleaned_data["name"],
                                              password=form.cleaned_data["password1"])
        except ValidationError as e:
            form.add_error(None, e)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return joined(request, found)
    return invitation_page(request, found, "new", form=form, status=400 if form.errors else 200)


def joined(request: HttpRequest, found: Invitation) -> HttpResponse:
    request.session[SESSION_KEY] = found.tenant_id  # land on the tenant just joined
    messages.success(request, f"Welcome to {found.tenant.name}.")
    return redirect("dashboard")
