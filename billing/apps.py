from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


def _budgets_changed(**_: Any) -> None:
    # Every process drops its budget table within a second (the handler is the proxy's, which keeps it).
    from gateway_site import changes

    changes.announce("budgets")


def _prices_changed(**_: Any) -> None:
    from gateway_site import changes

    changes.announce("prices")


def _drop_price_table(_: str) -> None:
    from . import pricing

    pricing.forget()


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from gateway_site import changes

        changes.register("prices", _drop_price_table)
        for model_name, receiver in (("Budget", _budgets_changed), ("Price", _prices_changed)):
            model = self.get_model(model_name)
            post_save.connect(receiver, sender=model, dispatch_uid=f"billing-{model_name}-save")
            post_delete.connect(receiver, sender=model, dispatch_uid=f"billing-{model_name}-delete")
