"""Management API: tenants, their projects and API keys. Operators (staff) see all; tenant owners only their own
tenants."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError, QuerySet
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import exceptions, mixins, permissions, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from gateway_site.api_errors import still_referenced

from . import keys, projects, services
from .models import ApiKey, Membership, Project, Tenant


def owned_tenants(user: Any) -> QuerySet[Tenant]:
    """The tenants the user may manage through the API: all for staff, else those they own."""
    if not user.is_authenticated:
        return Tenant.objects.none()
    if user.is_staff:
        return Tenant.objects.all()
    return Tenant.objects.filter(memberships__user=user, memberships__role=Membership.Role.OWNER)


class StaffOnly(permissions.BasePermission):
    message = "Only operators (staff users) can manage this."

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_staff)


class StaffWrites(permissions.BasePermission):
    """Owners read their tenants; only operators create, change or delete tenants."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return request.method in permissions.SAFE_METHODS or bool(request.user.is_staff)


class TenantSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["id", "name", "slug", "timezone", "contact_emails", "is_active", "alert_webhook_url",
                  "requests_per_minute", "tokens_per_minute", "max_concurrent", "batch_tier", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {"batch_tier": {"help_text": "Which queue runs the tenant's batches (high, default, low); "
                                                    "operators set it."}}


class TenantViewSet(viewsets.ModelViewSet):
    serializer_class = TenantSerializer
    permission_classes = [permissions.IsAuthenticated, StaffWrites]
    lookup_field = "slug"
    lookup_value_regex = "[-a-zA-Z0-9_]+"  # a slug's characters; anything else is a plain 404, never a query

    def get_queryset(self) -> QuerySet[Tenant]:
        return owned_tenants(self.request.user).order_by("name").distinct()

    def perform_destroy(self, instance: Tenant) -> None:
        prefixes = list(instance.api_keys.values_list("prefix", flat=True))
        try:
            instance.delete()
        except ProtectedError as e:  # its ledger rows are kept for billing
            raise still_referenced(e, "deactivate the tenant instead (is_active: false).") from None
        keys.forget_many(prefixes)  # or cached lookups would accept the deleted keys until they expire


class TenantField(serializers.SlugRelatedField):
    """A tenant by slug, among those the caller may manage: another tenant is as unknown as a missing one."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(slug_field="slug", **kwargs)

    def get_queryset(self) -> QuerySet[Tenant]:
        return owned_tenants(self.context["request"].user)


@extend_schema_field(OpenApiTypes.STR)
class ProjectRefField(serializers.Field):
    """A project of the key's tenant, given by slug or id (null: none); shown by slug. Resolved in the serializer's
    validate, once the tenant is known."""

    def to_representation(self, project: Project) -> str:
        return project.slug

    def to_internal_value(self, data: Any) -> int | str:
        if isinstance(data, bool) or not isinstance(data, int | str) or not str(data).strip() or len(str(data)) > 64:
            raise serializers.ValidationError("Give the project's slug or id, or null for none.")
        return data


def resolve_project(tenant: Tenant, ref: int | str) -> Project:
    """The tenant's project by id (a number) or slug (a string; digits are tried as an id after the slug)."""
    scope = Project.objects.filter(tenant=tenant)
    found = scope.filter(slug=ref).first() if isinstance(ref, str) else None
    digits = str(ref).strip()
    if found is None and digits.isascii() and digits.isdigit() and 0 < int(digits) < 2**63:
        found = scope.filter(pk=int(digits)).first()
    if found is None:  # another tenant's project is as unknown as a missing one
        raise serializers.ValidationError({"project": f"No project {str(ref)[:64]!r} in tenant {tenant.slug}."})
    return found


class ApiKeySerializer(serializers.ModelSerializer):
    tenant = TenantField()
    project = ProjectRefField(required=False, allow_null=True,
                              help_text="The key's project in its tenant, by slug or id; null for none. Its requests "
                                        "count toward it.")
    status = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = ["id", "tenant", "project", "name", "prefix", "status", "created_at", "expires_at", "revoked_at",
                  "last_used_at", "allowed_models", "requests_per_minute", "tokens_per_minute", "max_concurrent"]
        read_only_fields = ["prefix", "created_at", "revoked_at", "last_used_at"]

    def get_status(self, key: ApiKey) -> str:
        return key.status()

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        # A key can only narrow its tenant's models; a key never moves to another tenant.
        tenant = self.instance.tenant if self.instance is not None else data.get("tenant")
        if tenant is not None and "allowed_models" in data:
            try:
                services.check_allowed_models(tenant=tenant, allowed_models=data["allowed_models"])
            except DjangoValidationError as e:
                raise serializers.ValidationError(e.message_dict) from None
        if tenant is not None and data.get("project") is not None:
            data["project"] = resolve_project(tenant, data["project"])
        return data

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        if not self.context["request"].user.is_staff:
            for name in ("requests_per_minute", "tokens_per_minute", "max_concurrent"):
                fields[name].read_only = True  # rate limits are the operator's to set
        return fields

    def validate_expires_at(self, value: datetime | None) -> datetime | None:
        unchanged = self.instance is not None and value == self.instance.expires_at
        if value is not None and not unchanged and value <= timezone.now():
            raise serializers.ValidationError("The expiry time must be in the future.")
        return value


class IssuedKeySerializer(ApiKeySerializer):
    """A key as created or rotated: the one response that carries the key itself."""

    key = serializers.CharField(read_only=True, help_text="The key itself (tg-…), shown this once and never stored.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                    mixins.UpdateModelMixin, viewsets.GenericViewSet):
    """Keys are created (the plaintext is in the response, once), changed, revoked and rotated; never deleted."""

    serializer_class = ApiKeySerializer

    def get_queryset(self) -> QuerySet[ApiKey]:
        return (ApiKey.objects.filter(tenant__in=owned_tenants(self.request.user)).select_related("tenant", "project")
                .order_by("-id"))

    @extend_schema(responses={201: IssuedKeySerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key, secret = services.issue_key(tenant=data["tenant"], name=data["name"], created_by=request.user,
                                         expires_at=data.get("expires_at"), allowed_models=data.get("allowed_models"),
                                         project=data.get("project"),
                                         limits=keys.Limits(**{f: data.get(f) for f in (
                                             "requests_per_minute", "tokens_per_minute", "max_concurrent")}))
        return Response({**self.get_serializer(key).data, "key": secret}, status=201)

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        if "tenant" in serializer.validated_data and serializer.validated_data["tenant"] != serializer.instance.tenant:
            raise exceptions.ValidationError({"tenant": "A key cannot move to another tenant."})
        key = serializer.save()
        keys.forget(key.prefix)

    @extend_schema(request=None, responses={200: ApiKeySerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        key = self.get_object()
        try:
            services.revoke_key(key=key)
        except services.KeyNotActive as e:
            raise exceptions.ValidationError({"detail": str(e)}) from None
        return Response(self.get_serializer(key).data)

    @extend_schema(request=None, responses={201: IssuedKeySerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, pk: str | None = None) -> Response:
        key = self.get_object()
        if key.status() == "expired":  # its replacement would carry the same past expiry
            raise exceptions.ValidationError({"detail": f"{key.masked} has expired; issue a new key instead."})
        try:
            new, secret = services.rotate_key(key=key, created_by=request.user)
        except services.KeyNotActive as e:
            raise exceptions.ValidationError({"detail": str(e)}) from None
        return Response({**self.get_serializer(new).data, "key": secret}, status=201)


class ProjectSerializer(serializers.ModelSerializer):
    tenant = TenantField()
    owners = serializers.SlugRelatedField(slug_field="username", many=True, required=False,
                                          queryset=Membership.objects.none(),
                                          help_text="Usernames of members of the tenant answerable for the project.")
    keys = serializers.PrimaryKeyRelatedField(source="api_keys", many=True, read_only=True,
                                              help_text="Ids of the keys in the project; set a key's project to move it.")

    class Meta:
        model = Project
        fields = ["id", "tenant", "name", "slug", "owners", "keys", "created_at"]
        read_only_fields = ["created_at"]

    def get_fields(self) -> dict[str, serializers.Field]:
        from django.contrib.auth import get_user_model

        fields = super().get_fields()
        # Only members of tenants the caller manages can be named; anyone else is "does not exist".
        members = get_user_model().objects.filter(memberships__tenant__in=owned_tenants(self.context["request"].user))
        fields["owners"].child_relation.queryset = members.distinct()  # type: ignore[attr-defined]
        return fields


class ProjectViewSet(viewsets.ModelViewSet):
    """Projects of the tenants you manage: a key belongs to at most one, and usage can be grouped by it."""

    serializer_class = ProjectSerializer

    def get_queryset(self) -> QuerySet[Project]:
        return (Project.objects.filter(tenant__in=owned_tenants(self.request.user)).select_related("tenant")
                .prefetch_related("owners", "api_keys").order_by("tenant__slug", "slug"))

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        data = serializer.validated_data
        serializer.instance = as_api_errors(lambda: projects.create_project(
            tenant=data["tenant"], name=data["name"], slug=data["slug"], owners=data.get("owners", [])))

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        data, project = serializer.validated_data, serializer.instance
        if "tenant" in data and data["tenant"] != project.tenant:
            raise exceptions.ValidationError({"tenant": "A project cannot move to another tenant."})
        as_api_errors(lambda: projects.update_project(project=project, name=data.get("name"), slug=data.get("slug"),
                                                      owners=data.get("owners")))

    def perform_destroy(self, instance: Project) -> None:
        try:
            projects.delete_project(project=instance)
        except ProtectedError as e:  # its ledger rows are kept for billing
            raise still_referenced(e, "move its keys to another project instead.") from None


def as_api_errors(save: Any) -> Any:
    """Run a service; its ValidationError becomes the API's 400 with the same fields."""
    try:
        return save()
    except DjangoValidationError as e:
        raise serializers.ValidationError(e.message_dict if hasattr(e, "error_dict") else e.messages) from None
