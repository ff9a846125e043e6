"""The fields each object carries in the file, their defaults, and how values cross between the file and a row.

Export and plan both describe a row through these tables, so what is compared is exactly what is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from accounts.models import split_emails

REQUIRED = object()  # a field always written, whatever its value


@dataclass(frozen=True)
class Field:
    name: str
    default: Any = REQUIRED
    kind: str = "plain"  # plain | decimal | emails | text


PROVIDER = (Field("kind"), Field("preset", ""), Field("base_url", ""), Field("api_version", ""),
            Field("region", ""), Field("is_active", True))
ROUTE = (Field("aliases", []), Field("strip_prefix", ""), Field("is_active", True), Field("max_attempts", None),
         Field("retry_budget_seconds", None), Field("fallbacks", []), Field("context_window_fallbacks", []),
         Field("cache_enabled", False), Field("cache_ttl_seconds", 300), Field("cache_shared", False),
         Field("cache_per_user", False), Field("cache_sampled", False), Field("cache_cost", "free"),
         Field("batch_queue", ""), Field("batch_discount_percent", None, "decimal"))
DEPLOYMENT = (Field("weight", 1), Field("is_active", True))
PRICE = (Field("input_per_million", kind="decimal"), Field("output_per_million", kind="decimal"),
         Field("cached_input_per_million", None, "decimal"), Field("cache_write_per_million", None, "decimal"),
         Field("per_image", "0", "decimal"), Field("per_request", "0", "decimal"),
         Field("batch_discount_percent", "0", "decimal"), Field("note", ""))
TENANT = (Field("name"), Field("timezone", "UTC"), Field("contact_emails", [], "emails"), Field("is_active", True),
          Field("alert_webhook_url", ""), Field("requests_per_minute", None), Field("tokens_per_minute", None),
          Field("max_concurrent", None), Field("allowed_models", []), Field("batch_tier", "default"))
PROJECT = (Field("name"),)
# A budget is known by its scope, period and name; the rest are its settings.
BUDGET_SCOPE = (Field("name", ""), Field("project", ""), Field("model", ""), Field("tag", ""), Field("end_user", ""),
                Field("period", "month"))
BUDGET = (Field("amount", kind="decimal"), Field("hard", True), Field("alert_thresholds", "50,80,100", "text"),
          Field("is_active", True), Field("set_by", "operator"))


def plain_decimal(value: Any) -> str | None:
    """The file form of an amount: the shortest exact decimal string ("2.5", "0"), or None."""
    if value is None:
        return None
    return f"{Decimal(str(value)).normalize():f}"


def to_file(field: Field, value: Any) -> Any:
    """A row's value in the file's form."""
    if field.kind == "decimal":
        return plain_decimal(value)
    if field.kind == "emails":
        return split_emails(value or "")
    return list(value) if isinstance(value, list) else value


def canonical(field: Field, value: Any) -> Any:
    """A value read from a file in the form export writes (numbers and strings both name an amount)."""
    if field.kind == "decimal":
        return plain_decimal(value)
    return str(value) if field.kind == "text" else value  # alert_thresholds: 80 means "80"


def to_model(field: Field, value: Any) -> Any:
    """A file value (canonical) as the row's attribute."""
    if field.kind == "decimal":
        return None if value is None else Decimal(value)
    if field.kind == "emails":
        return ", ".join(value)
    return value


def entry(fields: tuple[Field, ...], values: dict[str, Any], *, first: dict[str, Any] | None = None) -> dict[str, Any]:
    """The file form of an object: ``first`` (its natural key), then each field that differs from its default."""
    out = dict(first or {})
    for field in fields:
        value = values.get(field.name, field.default)
        if field.default is REQUIRED or value != field.default:
            out[field.name] = value
    return out


def from_row(fields: tuple[Field, ...], row: Any) -> dict[str, Any]:
    return {field.name: to_file(field, getattr(row, field.name)) for field in fields}


def from_file(fields: tuple[Field, ...], data: dict[str, Any]) -> dict[str, Any]:
    return {field.name: canonical(field, data.get(field.name, field.default)) for field in fields}


def assign(fields: tuple[Field, ...], row: Any, values: dict[str, Any]) -> None:
    for field in fields:
        setattr(row, field.name, to_model(field, values[field.name]))


def env_name(provider: str) -> str:
    """The environment variable an export names for a provider's stored key: TOLLGATE_PROVIDER_<NAME>_KEY."""
    return f"TOLLGATE_PROVIDER_{re.sub(r'[^A-Z0-9]', '_', provider.upper())}_KEY"
