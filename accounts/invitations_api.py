"""Management API: invitations to join a tenant. Operators (staff) see all; tenant owners only their own tenants'."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django_ratelimit.core import is_ratelimited
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from gateway_site.api_errors import Conflict

from . import invitations
from .api import TenantField, owned_tenants
from .models import Invitation, Membership


class MailUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The invitation email could not be sent; nothing was saved. Try again later."
    default_code = "mail_unavailable"


class InvitationSerializer(serializers.ModelSerializer):
    tenant = TenantField()
    status = serializers.SerializerMethodField()
    invited_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Invitation
        fields = ["id", "tenant", "email", "role", "status", "invited_by", "created_at", "expires_at", "accepted_at",
                  "revoked_at"]
        read_only_fields = ["created_at", "expires_at", "accepted_at", "revoked_at"]

    def get_status(self, invitation: Invitation) -> str:
        return invitation.status()


class InvitationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                        viewsets.GenericViewSet):
    """Creating an invitation emails its link to the address (never in the response); invitations are revoked, not
    changed or deleted."""

    serializer_class = InvitationSerializer

    def get_queryset(self) -> QuerySet[Invitation]:
        return (Invitation.objects.filter(tenant__in=owned_tenants(self.request.user))
                .select_related("tenant", "invited_by").order_by("-id"))

    @extend_schema(responses={201: InvitationSerializer, 503: OpenApiResponse(
        description="The invitation email could not be sent; nothing was saved.")})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().create(request, *args, **kwargs)

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        data: dict[str, Any] = serializer.validated_data  # type: ignore[assignment]
        tenant = data["tenant"]
        if limited(self.request, tenant.pk):
            raise exceptions.Throttled(3600, "Too many invitations from this tenant; try again in an hour.")
        try:
            serializer.instance = invitations.invite(
                tenant=tenant, email=data["email"], role=data.get("role", Membership.Role.MEMBER),
                invited_by=self.request.user, site=self.request.build_absolute_uri("/"))
        except DjangoValidationError as e:
            raise serializers.ValidationError(e.message_dict if hasattr(e, "error_dict") else e.messages) from None
        except OSError:  # smtplib's errors are OSErrors too
            raise MailUnavailable() from None

    @extend_schema(request=None, responses={200: InvitationSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        invitation = self.get_object()
        try:
            invitations.revoke(invitation=invitation)
        except invitations.InvitationClosed as e:
            raise Conflict(e.message) from None
        return Response(self.get_serializer(invitation).data)


def limited(request: Request, tenant_id: int) -> bool:
    # The same per-tenant counter as the Members page's invite form.
    from .members import INVITE_GROUP, invite_rate

    return bool(is_ratelimited(request, group=INVITE_GROUP, key=lambda group, request: str(tenant_id),
                               rate=invite_rate, method="POST", increment=True))
