from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _move_money_keys(plan: Any = None, **_: Any) -> None:
    # `migrate` moves the money state of earlier versions to its current key names, once per Redis (a flush of
    # the test database sends this signal too, without a plan: nothing to do then).
    if plan is None:
        return
    from billing import layout

    moved = layout.migrate_configured()
    if any(moved.values()):
        print(f"  Moved money keys in Redis to the tagged layout: {moved}")


class GatewaySiteConfig(AppConfig):
    name = "gateway_site"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)

        from django.apps import apps

        # Sent once per app with models (this one has none): billing's, as the ledger's migrations end.
        post_migrate.connect(_move_money_keys, sender=apps.get_app_config("billing"),
                             dispatch_uid="gateway-site-money-keys")
