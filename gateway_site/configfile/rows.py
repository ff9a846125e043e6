"""Writing rows for an apply: validated like the admin validates them, errors as ConfigError, caches told."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from accounts import keys
from accounts.models import Project
from billing.models import Price, UsageRecord, UsageRollup
from proxy import credentials
from proxy.models import Provider

from . import ConfigError


def message(error: ValidationError) -> str:
    if hasattr(error, "error_dict"):
        return "; ".join(f"{name}: {' '.join(errors)}" if name != "__all__" else " ".join(errors)
                         for name, errors in error.message_dict.items())
    return " ".join(error.messages)


def save(row: models.Model, label: str) -> None:
    """Validate the row as the admin would, then save it: the model's signals tell every process of the change."""
    try:
        row.full_clean()
    except ValidationError as e:
        raise ConfigError(f"{label}: {message(e)}") from None
    row.save()


def delete_row(row: models.Model) -> None:
    row.delete()


def credential_state(provider: Provider) -> tuple[str, str, str]:
    """(kind, value, description) of the provider's key as stored; the value is compared, never shown."""
    if provider.credential_encrypted:
        try:
            return "stored", credentials.decrypt(provider.credential_encrypted), "a stored key"
        except ValueError:  # encrypted under another key: whatever the file says is a change
            return "stored", "\0undecryptable", "a stored key that cannot be decrypted"
    if provider.credential_env:
        return "env", provider.credential_env, f"read from ${provider.credential_env} at request time"
    return "none", "", "none"


def set_credential(provider: Provider, wanted: tuple[str, str, str]) -> None:
    kind, value, _ = wanted
    if kind == "stored":
        current = credential_state(provider) if provider.credential_encrypted else None
        if current is None or current[1] != value:  # unchanged: keep the ciphertext (and the audit log quiet)
            provider.set_credential(value)
        provider.credential_env = ""
    else:
        provider.set_credential("")
        provider.credential_env = value if kind == "env" else ""


def price_in_use(price: Price) -> str | None:
    if UsageRecord.objects.filter(price=price).exists():
        return "usage records were charged at it (add a newer price instead)"
    return None


def project_in_use(project: Project) -> str | None:
    if UsageRecord.objects.filter(project=project).exists() or UsageRollup.objects.filter(project=project).exists():
        return "the ledger has usage of it"
    return None


def delete_project(project: Project) -> None:
    prefixes = list(project.api_keys.values_list("prefix", flat=True))
    project.delete()
    keys.forget_many(prefixes)  # the keys' cached records still name the project
