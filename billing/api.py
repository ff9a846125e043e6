"""Management API: budgets (operators, and owners for their tenants) and prices (operators)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import permissions, serializers, viewsets

from accounts.api import StaffOnly, TenantField, owned_tenants
from accounts.models import ApiKey

from . import budgets
from .models import Budget, Price


class BudgetSerializer(serializers.ModelSerializer):
    tenant = TenantField()
    key = serializers.PrimaryKeyRelatedField(queryset=ApiKey.objects.all(), required=False, allow_null=True)
    this_period = serializers.SerializerMethodField()

    class Meta:
        model = Budget
        fields = ["id", "tenant", "key", "name", "amount", "period", "hard", "alert_thresholds", "is_active", "created_at",
                  "this_period"]
        read_only_fields = ["created_at"]

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        # Only keys of tenants the caller manages can be named; another tenant's key is "does not exist".
        fields["key"].queryset = ApiKey.objects.filter(tenant__in=owned_tenants(self.context["request"].user))  # type: ignore[attr-defined]
        return fields

    def get_this_period(self, budget: Budget) -> dict[str, Any]:
        state = budgets.status(budget)
        return {"starts_at": state.starts_at, "spent_micros": state.spent_micros,
                "reserved_micros": state.reserved_micros, "limit_micros": state.limit_micros}

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        tenant = data.get("tenant") or getattr(self.instance, "tenant", None)
        key = data.get("key", getattr(self.instance, "key", None))
        if key is not None and key.tenant_id != tenant.pk:
            raise serializers.ValidationError({"key": "The key must belong to the budget's tenant."})
        return data


class BudgetViewSet(viewsets.ModelViewSet):
    serializer_class = BudgetSerializer

    def get_queryset(self) -> QuerySet[Budget]:
        return (Budget.objects.filter(tenant__in=owned_tenants(self.request.user))
                .select_related("tenant", "key").order_by("id"))


class PriceSerializer(serializers.ModelSerializer):
    class Meta:
        model = Price
        fields = ["id", "model", "provider", "effective_from", "input_per_million", "output_per_million",
                  "cached_input_per_million", "per_request", "note"]


class PriceViewSet(viewsets.ModelViewSet):
    serializer_class = PriceSerializer
    permission_classes = [permissions.IsAuthenticated, StaffOnly]
    queryset = Price.objects.select_related("provider").order_by("model", "-effective_from")
