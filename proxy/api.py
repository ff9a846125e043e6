"""Management API: providers, model routes and their deployments (operators only)."""

from __future__ import annotations

import copy
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError
from rest_framework import permissions, serializers, viewsets

from accounts.api import StaffOnly
from gateway_site.api_errors import still_referenced

from . import routing
from .admin import check_batch_queue
from .models import Deployment, ModelRoute, Provider


class ProviderSerializer(serializers.ModelSerializer):
    api_key = serializers.CharField(write_only=True, required=False, allow_blank=True, trim_whitespace=True,
                                    help_text="Stored encrypted and never returned. An empty string removes it.")
    has_credential = serializers.BooleanField(read_only=True)

    class Meta:
        model = Provider
        fields = ["id", "name", "kind", "preset", "base_url", "credential_env", "is_active", "api_key", "has_credential",
                  "created_at"]
        read_only_fields = ["created_at"]

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        # The model's own rules (a base URL or a preset with one; a variable's name), as the admin applies them.
        provider = copy.copy(self.instance) if self.instance is not None else Provider()
        for name, value in data.items():
            if name != "api_key":
                setattr(provider, name, value)
        try:
            provider.clean()
        except DjangoValidationError as e:
            raise serializers.ValidationError(serializers.as_serializer_error(e)) from None
        return data

    def save(self, **kwargs: Any) -> Provider:
        api_key = self.validated_data.pop("api_key", None)
        provider: Provider = super().save(**kwargs)
        if api_key is not None:
            provider.set_credential(api_key)
            provider.save(update_fields=["credential_encrypted"])
        return provider


class DeploymentSerializer(serializers.ModelSerializer):
    route = serializers.SlugRelatedField(slug_field="name", queryset=ModelRoute.objects.all())
    provider = serializers.SlugRelatedField(slug_field="name", queryset=Provider.objects.all())

    class Meta:
        model = Deployment
        fields = ["id", "route", "provider", "upstream_model", "weight", "is_active"]


class RouteSerializer(serializers.ModelSerializer):
    deployments = DeploymentSerializer(many=True, read_only=True)

    class Meta:
        model = ModelRoute
        fields = ["id", "name", "aliases", "strip_prefix", "is_active", "created_at", "batch_queue",
                  "batch_discount_percent", "deployments"]
        read_only_fields = ["created_at"]

    def validate_batch_queue(self, value: str) -> str:
        try:
            check_batch_queue(value.strip())
        except DjangoValidationError as e:
            raise serializers.ValidationError(e.messages) from None
        return value.strip()


class RoutingViewSet(viewsets.ModelViewSet):
    permission_classes = [permissions.IsAuthenticated, StaffOnly]
    in_use_advice = "it cannot be deleted."

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        serializer.save()
        routing.invalidate()

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        serializer.save()
        routing.invalidate()

    def perform_destroy(self, instance: Any) -> None:
        try:
            instance.delete()
        except ProtectedError as e:
            raise still_referenced(e, self.in_use_advice) from None
        routing.invalidate()


class ProviderViewSet(RoutingViewSet):
    serializer_class = ProviderSerializer
    in_use_advice = "deactivate the provider instead (is_active: false), or delete its deployments first."
    queryset = Provider.objects.order_by("name")


class RouteViewSet(RoutingViewSet):
    serializer_class = RouteSerializer
    queryset = ModelRoute.objects.prefetch_related("deployments__provider", "deployments__route").order_by("name")


class DeploymentViewSet(RoutingViewSet):
    serializer_class = DeploymentSerializer
    queryset = Deployment.objects.select_related("route", "provider").order_by("id")
