"""Management API: budgets (operators, and owners for their tenants) and prices (operators); usage is usage_api."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from django.db.models import ProtectedError, QuerySet
from drf_spectacular.utils import (OpenApiResponse, extend_schema, extend_schema_field, extend_schema_view,
                                   inline_serializer)
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, permissions, serializers, viewsets

from accounts.api import StaffOnly, TenantField, owned_tenants
from accounts.models import ApiKey, Tenant
from gateway_site.api_errors import still_referenced

from . import budgets
from .models import Budget, Price

# What an owner may change on a budget the operator set: when and where it alerts, never what it allows.
OWNER_MAY_CHANGE = {"alert_thresholds"}
OPERATORS_BUDGET = ("This budget was set by your Tollgate operator: you may change only its alert_thresholds, not "
                    "{what}. Add a budget of your own to restrict spending further.")


@extend_schema_field({"oneOf": [{"type": "integer"}, {"type": "string"}], "nullable": True,
                      "description": "Only the requests of this project's keys: its id or slug (read back as its id)."})
class ProjectField(serializers.Field):
    """A project by its id or its slug; read back as its id. Resolved within the budget's tenant (validate)."""

    def to_representation(self, value: Any) -> int:
        return int(value.pk)

    def to_internal_value(self, data: Any) -> int | str:
        if isinstance(data, bool) or not isinstance(data, (int, str)) or (isinstance(data, str) and len(data) > 64):
            raise serializers.ValidationError("A project's id or slug.")
        return data


class BudgetSerializer(serializers.ModelSerializer):
    tenant = TenantField()
    key = serializers.PrimaryKeyRelatedField(queryset=ApiKey.objects.all(), required=False, allow_null=True)
    project = ProjectField(required=False, allow_null=True)
    this_period = serializers.SerializerMethodField()

    class Meta:
        model = Budget
        fields = ["id", "tenant", "key", "project", "model", "tag", "end_user", "name", "amount", "period", "hard",
                  "alert_thresholds", "is_active", "set_by", "created_at", "this_period"]
        read_only_fields = ["set_by", "created_at"]
        extra_kwargs = {"amount": {"help_text": "USD per period, up to six decimals (micro-dollars); more than zero."}}

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        # Only keys of tenants the caller manages can be named; another tenant's key is "does not exist".
        fields["key"].queryset = ApiKey.objects.filter(tenant__in=owned_tenants(self.context["request"].user))  # type: ignore[attr-defined]
        return fields

    def get_this_period(self, budget: Budget) -> dict[str, Any]:
        state = budgets.status(budget)
        return {"starts_at": state.starts_at, "spent_micros": state.spent_micros,
                "reserved_micros": state.reserved_micros, "limit_micros": state.limit_micros}

    def validate_amount(self, value: Any) -> Any:
        if value <= 0:
            raise serializers.ValidationError("A budget must be more than zero.")
        return value

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        tenant = data.get("tenant") or getattr(self.instance, "tenant", None)
        key = data.get("key", getattr(self.instance, "key", None))
        if key is not None and key.tenant_id != tenant.pk:
            raise serializers.ValidationError({"key": "The key must belong to the budget's tenant."})
        if data.get("project") is not None:
            data["project"] = project_of(tenant, data["project"])
        # The narrower scopes are checked by the model's own rules (Budget.clean_scopes), on the budget as it would be.
        scoped = ("key", "project", "model", "tag", "end_user", "period")
        budget = Budget(tenant=tenant, **{name: data.get(name, getattr(self.instance, name, None) if self.instance
                                                         else Budget._meta.get_field(name).get_default())
                                          for name in scoped})
        try:
            budget.clean_scopes()
        except DjangoValidationError as e:
            raise serializers.ValidationError(e.message_dict) from None
        return data


def project_of(tenant: Tenant, value: int | str) -> Any:
    """The tenant's project with this id or slug; another tenant's project is as unknown as a missing one."""
    from accounts.models import Project

    mine = Project.objects.filter(tenant=tenant)
    found = mine.filter(slug=value).first() if isinstance(value, str) else None
    if found is None and (isinstance(value, int) or value.isascii() and value.isdigit()) and 0 < int(value) < 2**63:
        found = mine.filter(pk=int(value)).first()
    if found is None:
        raise serializers.ValidationError({"project": "No such project in the budget's tenant."})
    return found


def locked_changes(budget: Budget, data: dict[str, Any]) -> list[str]:
    """The fields ``data`` would change that an owner may not change on an operator's budget."""
    return sorted(name for name, value in data.items() if name not in OWNER_MAY_CHANGE and getattr(budget, name) != value)


ERRORS = {
    400: OpenApiResponse(description="Invalid fields, in DRF's envelope: each field with its messages."),
    403: OpenApiResponse(
        response=inline_serializer("BudgetPermissionDenied", {"detail": serializers.CharField()}),
        description="Not signed in, or a tenant owner changing or deleting a budget their operator set (only its "
                    "alert thresholds are theirs to change)."),
    404: OpenApiResponse(description="No such budget among the tenants you manage."),
}


@extend_schema_view(
    create=extend_schema(responses={201: BudgetSerializer, 400: ERRORS[400], 403: ERRORS[403]}),
    update=extend_schema(responses={200: BudgetSerializer, **ERRORS}),
    partial_update=extend_schema(responses={200: BudgetSerializer, **ERRORS}),
    destroy=extend_schema(responses={204: None, 403: ERRORS[403], 404: ERRORS[404]}),
)
class BudgetViewSet(viewsets.ModelViewSet):
    """Operators set budgets on any tenant (``set_by: operator``). Owners add budgets of their own (``set_by:
    tenant``), which only ever restrict, and may change only the alert thresholds of their operator's budgets."""

    serializer_class = BudgetSerializer

    def get_queryset(self) -> QuerySet[Budget]:
        return (Budget.objects.filter(tenant__in=owned_tenants(self.request.user))
                .select_related("tenant", "key").order_by("id"))

    def is_operator(self) -> bool:
        return bool(self.request.user.is_staff)

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        serializer.save(set_by=Budget.SetBy.OPERATOR if self.is_operator() else Budget.SetBy.TENANT)

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        budget = serializer.instance
        if budget.set_by == Budget.SetBy.OPERATOR and not self.is_operator():
            locked = locked_changes(budget, serializer.validated_data)
            if locked:
                raise exceptions.PermissionDenied(OPERATORS_BUDGET.format(what="its " + ", ".join(locked)))
        serializer.save()

    def perform_destroy(self, instance: Budget) -> None:
        if instance.set_by == Budget.SetBy.OPERATOR and not self.is_operator():
            raise exceptions.PermissionDenied(OPERATORS_BUDGET.format(what="delete it"))
        instance.delete()


class PriceSerializer(serializers.ModelSerializer):
    class Meta:
        model = Price
        fields = ["id", "model", "provider", "effective_from", "input_per_million", "output_per_million",
                  "cached_input_per_million", "per_request", "batch_discount_percent", "note"]
        extra_kwargs = {name: {"min_value": Decimal(0)} for name in (
            "input_per_million", "output_per_million", "cached_input_per_million", "per_request")}
        extra_kwargs["batch_discount_percent"] = {"min_value": Decimal(0), "max_value": Decimal(100)}

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        # One price per model (or per provider's model) and day: the database's constraints, as a 400 that says so.
        model = data.get("model", getattr(self.instance, "model", None))
        provider = data["provider"] if "provider" in data else getattr(self.instance, "provider", None)
        effective_from = data.get("effective_from") or getattr(self.instance, "effective_from", None) or date.today()
        same_day = Price.objects.filter(model=model, provider=provider, effective_from=effective_from)
        if self.instance is not None:
            same_day = same_day.exclude(pk=self.instance.pk)
        if same_day.exists():
            raise serializers.ValidationError({"effective_from": "There is already a price for this model"
                                               f"{' and provider' if provider else ''} from {effective_from}; "
                                               "change that one instead."})
        return data


class PriceViewSet(viewsets.ModelViewSet):
    serializer_class = PriceSerializer
    permission_classes = [permissions.IsAuthenticated, StaffOnly]
    queryset = Price.objects.select_related("provider").order_by("model", "-effective_from")

    def perform_destroy(self, instance: Price) -> None:
        try:
            instance.delete()
        except ProtectedError as e:  # requests were costed with it, and their cost must stay explainable
            raise still_referenced(e, "add a price from a later day instead.") from None
