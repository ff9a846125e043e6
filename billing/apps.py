from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


def _drop_budget_table(**_: Any) -> None:
    # The process that saved a budget sees it at once; others reload within TOLLGATE_ROUTES_CACHE_SECONDS.
    from proxy import limits

    limits.forget_budgets()


def _drop_price_table(**_: Any) -> None:
    from . import pricing

    pricing.forget()


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        for model_name, receiver in (("Budget", _drop_budget_table), ("Price", _drop_price_table)):
            model = self.get_model(model_name)
            post_save.connect(receiver, sender=model, dispatch_uid=f"billing-{model_name}-save")
            post_delete.connect(receiver, sender=model, dispatch_uid=f"billing-{model_name}-delete")
