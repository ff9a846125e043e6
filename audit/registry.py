"""What the audit log records: the models an operator or a tenant changes, never a secret or a digest.

Each entry carries, in ``additional_data``, its source (admin, api, page, command), the tenant whose thing changed
(absent for operator-wide rows: prices, providers, routes, deployments, management tokens) and, when a plain
create/update says too little, the verb (revoke, rotate). The Activity page and the admin filter on these keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from auditlog.models import LogEntry
from auditlog.registry import auditlog
from django.db import models
from django.db.models.signals import pre_save

from . import context

HIDDEN = "audit.registry.hidden"


def hidden(value: str) -> str:
    """What the log shows of a secret: whether it is set, so a change shows without its value. Of a URL (a webhook's
    path often holds its token, as Slack's do), only the scheme and host."""
    if value in ("", "None"):  # auditlog passes values as text: None is "None"
        return "(none)"
    url = urlsplit(value) if value.startswith(("http://", "https://")) else None
    return f"{url.scheme}://{url.hostname}/…" if url and url.hostname else "(set)"


def own_tenant(instance: models.Model) -> int | None:
    return instance.pk  # type: ignore[no-any-return]


def tenant_field(instance: models.Model) -> int | None:
    return getattr(instance, "tenant_id", None)


def no_tenant(instance: models.Model) -> int | None:
    return None


def additional_data(tenant_of: Callable[[models.Model], int | None]) -> Callable[[models.Model], dict[str, Any]]:
    # auditlog calls the model's get_additional_data() for every entry it writes, signals and explicit calls alike.
    def get_additional_data(self: models.Model) -> dict[str, Any]:
        tenant = tenant_of(self)
        return {} if tenant is None else {"tenant": tenant}

    return get_additional_data


def register_models() -> None:
    from accounts.models import ApiKey, Invitation, ManagementToken, Membership, Project, Tenant
    from billing.models import Budget, Price
    from proxy.models import Deployment, ModelRoute, Provider

    always_out = ["created_at"]
    plan: list[tuple[type[models.Model], Callable[[models.Model], int | None], dict[str, Any]]] = [
        (Tenant, own_tenant, {"exclude_fields": always_out, "mask_fields": ["alert_webhook_secret", "alert_webhook_url"]}),
        (Membership, tenant_field, {"exclude_fields": always_out}),
        (Invitation, tenant_field, {"exclude_fields": always_out}),
        (Project, tenant_field, {"exclude_fields": always_out, "m2m_fields": {"owners"}}),
        (ApiKey, tenant_field, {"exclude_fields": [*always_out, "digest", "last_used_at", "expiry_notified_at"]}),
        (ManagementToken, no_tenant, {"exclude_fields": [*always_out, "digest", "last_used_at"]}),
        (Budget, tenant_field, {"exclude_fields": always_out}),
        (Price, no_tenant, {}),
        (Provider, no_tenant, {"exclude_fields": always_out, "mask_fields": ["credential_encrypted"]}),
        (ModelRoute, no_tenant, {"exclude_fields": always_out}),
        (Deployment, no_tenant, {}),
    ]
    for model, tenant_of, options in plan:
        model.get_additional_data = additional_data(tenant_of)  # type: ignore[attr-defined]
        auditlog.register(model, mask_callable=HIDDEN, **options)
    pre_save.connect(stamp, sender=LogEntry, dispatch_uid="tollgate-audit-stamp")


def stamp(sender: type[LogEntry], instance: LogEntry, **kwargs: Any) -> None:
    """Fill in the source, client address and actor of a new entry from the running request (or the command line)."""
    if instance.pk is not None:
        return
    origin = context.current()
    data = dict(instance.additional_data or {})
    data.setdefault("source", origin.source)
    if (verb := context.current_verb()) is not None:
        data.setdefault("verb", verb)
    instance.additional_data = data
    request = origin.request
    if request is None:
        return
    if instance.remote_addr is None:
        instance.remote_addr = request.META.get("REMOTE_ADDR") or None
    user = getattr(request, "user", None)  # a management-API token's user once DRF has authenticated it
    if instance.actor_id is None and user is not None and user.is_authenticated:
        instance.actor = user
        instance.actor_email = getattr(user, "email", None) or None
