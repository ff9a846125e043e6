from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


def _tenant_changed(instance: Any, created: bool = False, **_: Any) -> None:
    # Key records carry the tenant's state, limits and models; a new tenant has no key yet.
    if not created:
        from . import keys

        keys.forget_tenant(instance.pk)


def _membership_deleted(instance: Any, **_: Any) -> None:
    from .projects import drop_owner

    drop_owner(tenant_id=instance.tenant_id, user_id=instance.user_id)


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from gateway_site import changes

        from . import keys

        changes.register("key", keys.drop_local)
        changes.register("tenant", keys.drop_local_tenant)
        tenant = self.get_model("Tenant")
        post_save.connect(_tenant_changed, sender=tenant, dispatch_uid="accounts-Tenant-save")
        post_delete.connect(_tenant_changed, sender=tenant, dispatch_uid="accounts-Tenant-delete")
        post_delete.connect(_membership_deleted, sender=self.get_model("Membership"),
                            dispatch_uid="accounts-Membership-delete")
