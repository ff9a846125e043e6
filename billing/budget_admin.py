"""The ops console's budgets: on their own page, as rows of a tenant's and a key's page, and the alerts they sent."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest

from accounts.models import ApiKey, Tenant

from . import budgets
from .models import Budget, BudgetAlert

dollars = budgets.usd  # $1.50 for whole cents; every digit down to the micro-dollar otherwise


class BudgetStatusColumn:
    def get_queryset(self, request: HttpRequest) -> QuerySet[Budget]:
        # The status needs the tenant (its time zone), and each row names its key: fetch both along.
        return super().get_queryset(request).select_related("tenant", "key")  # type: ignore[misc]

    @admin.display(description="this period")
    def this_period(self, budget: Budget) -> str:
        if budget.pk is None:
            return "—"
        status = budgets.status(budget)
        return (f"{dollars(status.spent_micros)} spent / {dollars(status.reserved_micros)} reserved / "
                f"{dollars(status.remaining_micros)} left")


@admin.register(Budget)
class BudgetAdmin(BudgetStatusColumn, admin.ModelAdmin):
    list_display = ["label", "tenant", "scope", "amount", "period", "hard", "is_active", "set_by", "this_period"]
    list_select_related = ["tenant", "key", "project"]
    list_filter = ["period", "hard", "is_active", "set_by"]
    search_fields = ["name", "tenant__slug", "tenant__name", "=key__prefix", "model", "=tag", "=end_user",
                     "project__slug"]
    autocomplete_fields = ["tenant", "key"]
    # A budget covers the requests matching every scope set: the key, project, model (or glob), tag and end user.
    fields = ["tenant", "key", "project", "model", "tag", "end_user", "name", "amount", "period", "hard",
              "alert_thresholds", "is_active", "set_by", "this_period", "created_at"]
    readonly_fields = ["set_by", "this_period", "created_at"]  # a budget added here is the operator's
    list_per_page = 50  # each row asks for its period's status

    @admin.display(description="name", ordering="name")
    def label(self, budget: Budget) -> str:
        return str(budget)

    @admin.display(description="scope")
    def scope(self, budget: Budget) -> str:
        return budget.scope_label


class BudgetInline(BudgetStatusColumn, admin.TabularInline):
    model = Budget
    fk_name = "tenant"
    extra = 0
    # The model, tag and end-user scopes and the alert thresholds are set on the budget's own page (the change
    # link): the tenant page stays readable at laptop widths.
    fields = ["name", "key", "project", "amount", "period", "hard", "is_active", "set_by", "this_period"]
    readonly_fields = ["set_by", "this_period"]
    show_change_link = True

    def get_formset(self, request: HttpRequest, obj: Model | None = None, **kwargs: Any) -> type[BaseInlineFormSet]:
        from accounts.models import Project

        formset: type[BaseInlineFormSet] = super().get_formset(request, obj, **kwargs)
        if "key" in formset.form.base_fields:
            # Offer this tenant's keys only, rather than every key of every tenant.
            keys = ApiKey.objects.for_tenant(obj) if isinstance(obj, Tenant) else ApiKey.objects.none()
            formset.form.base_fields["key"].queryset = keys  # type: ignore[attr-defined]
        if "project" in formset.form.base_fields:
            projects = Project.objects.filter(tenant=obj) if isinstance(obj, Tenant) else Project.objects.none()
            formset.form.base_fields["project"].queryset = projects  # type: ignore[attr-defined]
        return formset


class KeyBudgetFormSet(BaseInlineFormSet):
    def save_new(self, form: ModelForm, commit: bool = True) -> Budget:
        form.instance.tenant_id = self.instance.tenant_id
        budget: Budget = super().save_new(form, commit)
        return budget


class KeyBudgetInline(BudgetStatusColumn, admin.TabularInline):
    model = Budget
    fk_name = "key"
    formset = KeyBudgetFormSet
    extra = 0
    fields = ["name", "amount", "period", "hard", "alert_thresholds", "is_active", "set_by", "this_period"]
    readonly_fields = ["set_by", "this_period"]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = ["created_at", "budget", "tenant", "kind", "threshold", "period_start", "spent", "limit",
                    "email_sent_at", "webhook_sent_at"]
    list_select_related = ["budget__tenant", "budget__key"]
    list_filter = ["kind", "threshold", ("budget__tenant", admin.RelatedOnlyFieldListFilter)]
    date_hierarchy = "created_at"

    @admin.display(description="tenant")
    def tenant(self, alert: BudgetAlert) -> str:
        return str(alert.budget.tenant)

    @admin.display(description="spent", ordering="spent_micros")
    def spent(self, alert: BudgetAlert) -> str:
        return dollars(alert.spent_micros)

    @admin.display(description="limit")
    def limit(self, alert: BudgetAlert) -> str:
        return dollars(alert.limit_micros)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: BudgetAlert | None = None) -> bool:
        return False
