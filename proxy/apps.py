from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_delete, post_save


def _routes_changed(**_: Any) -> None:
    from gateway_site import changes

    changes.announce("routes")


def _drop_routing_table(_: str) -> None:
    from . import routing

    routing.invalidate()


def _drop_budget_table(_: str) -> None:
    from . import limits

    limits.forget_budgets()


class ProxyConfig(AppConfig):
    name = "proxy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from gateway_site import changes

        # Every process drops its copy within a second of a change (gateway_site/changes.py).
        changes.register("routes", _drop_routing_table)
        changes.register("budgets", _drop_budget_table)
        for model_name in ("Provider", "ModelRoute", "Deployment"):
            model = self.get_model(model_name)
            post_save.connect(_routes_changed, sender=model, dispatch_uid=f"routing-{model_name}-save")
            post_delete.connect(_routes_changed, sender=model, dispatch_uid=f"routing-{model_name}-delete")
        from . import metrics

        metrics.install()  # Prometheus metrics, when TOLLGATE_METRICS is on (before any metric is created)
        if settings.TOLLGATE_OTLP_ENDPOINT:  # off: OpenTelemetry is not even imported
            from . import tracing

            tracing.start()
