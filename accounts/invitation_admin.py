"""The ops console's invitations: an operator invites someone (e.g. a new tenant's first owner) or withdraws a link.

An invitation is never edited: adding one emails its link, and the link is shown (read-only) while it is pending.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from . import invitations
from .models import Invitation


class InvitationForm(forms.ModelForm):
    class Meta:
        model = Invitation
        fields = ["tenant", "email", "role"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("tenant") and cleaned.get("email") and cleaned.get("role"):
            try:
                cleaned["email"] = invitations.check_invitable(tenant=cleaned["tenant"], email=cleaned["email"],
                                                               role=cleaned["role"])
            except ValidationError as e:
                self.add_error("email" if not hasattr(e, "error_dict") else None, e)
        return cleaned


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    form = InvitationForm
    list_display = ["email", "tenant", "role", "invitation_status", "invited_by", "created_at", "expires_at"]
    list_filter = ["role", "tenant"]
    list_select_related = ["tenant", "invited_by"]
    search_fields = ["email", "tenant__name", "tenant__slug"]
    autocomplete_fields = ["tenant"]
    actions = ["revoke_selected"]
    ordering = ["-created_at"]

    def get_fields(self, request: HttpRequest, obj: Invitation | None = None) -> list[str]:
        if obj is None:
            return ["tenant", "email", "role"]
        return ["tenant", "email", "role", "invitation_status", "link", "invited_by", "created_at", "expires_at",
                "accepted_at", "accepted_by", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Invitation | None = None) -> list[str]:
        return [] if obj is None else self.get_fields(request, obj)

    @admin.display(description="status")
    def invitation_status(self, invitation: Invitation) -> str:
        return invitation.status()

    @admin.display(description="link")
    def link(self, invitation: Invitation) -> str:
        if invitation.status() != "pending":
            return "—"
        return format_html("<code>{}</code>", invitations.link_for(invitation))

    def has_change_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False  # withdrawn, not deleted: the row says who was invited by whom

    def save_model(self, request: HttpRequest, obj: Invitation, form: ModelForm, change: bool) -> None:
        try:
            made = invitations.invite(tenant=obj.tenant, email=obj.email, role=obj.role, invited_by=request.user,
                                      site=request.build_absolute_uri("/"))
        except OSError:  # smtplib's errors are OSErrors too; nothing was kept
            messages.error(request, f"The invitation email to {obj.email} could not be sent; nothing was saved.")
            return
        obj.pk, obj.created_at, obj.expires_at, obj.invited_by = made.pk, made.created_at, made.expires_at, made.invited_by
        obj._state.adding = False

    def response_add(self, request: HttpRequest, obj: Invitation, post_url_continue: str | None = None) -> HttpResponse:
        if obj.pk is None:
            return HttpResponseRedirect(reverse("admin:accounts_invitation_changelist"))
        return super().response_add(request, obj, post_url_continue)

    def log_addition(self, request: HttpRequest, obj: Invitation, message: Any) -> Any:
        return super().log_addition(request, obj, message) if obj.pk else None

    @admin.action(description="Revoke the selected invitations")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[Invitation]) -> None:
        count = 0
        for invitation in queryset.select_related("tenant"):
            try:
                invitations.revoke(invitation=invitation)
            except invitations.InvitationClosed:
                continue
            count += 1
        messages.success(request, f"Revoked {count} invitations; their links no longer work.")
