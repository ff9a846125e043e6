"""Reading a configuration file: YAML, then the JSON Schema, then the checks a schema cannot express."""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import ConfigError

SCHEMA = Path(__file__).with_name("schema.json")


@cache
def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA.read_text())
    return data


def parse(text: str, *, source: str = "the file") -> dict[str, Any]:
    """Return the validated document. Raises ConfigError naming the line or the path of what is wrong."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{source} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping with at least `version: 1`")
    data = plain(data)
    validate(data)
    check_unique(data)
    return data


def plain(value: Any) -> Any:
    """YAML reads an unquoted 2026-01-01 as a date: give it back as the string the schema expects."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def location(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate(data: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = [f"{location(e.absolute_path)}: {describe(e)}" for e in errors[:10]]
        more = f"\n(and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise ConfigError("the file does not match the schema:\n" + "\n".join(lines) + more)


def describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "not" and error.validator_value == {"required": ["credential", "credential_env"]}:
        return "give either credential or credential_env, not both"
    if error.validator == "oneOf" and error.context:  # an amount: say what it should look like
        return f"{error.instance!r} is not an amount such as \"2.5\" or 10"
    if error.validator == "pattern" and str(error.validator_value).startswith("^\\$\\{"):
        return (f"{error.instance!r} is not an environment-variable reference such as ${{OPENAI_API_KEY}}: "
                "the file never holds a secret itself")
    return error.message


def check_unique(data: dict[str, Any]) -> None:
    duplicates(data.get("providers", []), lambda p: p["name"], "providers", "provider")
    duplicates(data.get("routes", []), lambda r: r["name"], "routes", "route")
    for route in data.get("routes", []):
        duplicates(route.get("deployments", []), lambda d: f"{d['provider']}/{d['upstream_model']}",
                   f"routes[{route['name']}].deployments", "deployment")
    duplicates(data.get("prices", []), lambda p: f"{p['model']} ({p.get('provider') or 'any provider'}) from "
               f"{p['effective_from']}", "prices", "price")
    duplicates(data.get("tenants", []), lambda t: t["slug"], "tenants", "tenant")
    for tenant in data.get("tenants", []):
        duplicates(tenant.get("projects", []), lambda p: p["slug"], f"tenants[{tenant['slug']}].projects", "project")


def duplicates(items: list[dict[str, Any]], key: Any, where: str, noun: str) -> None:
    counts = Counter(key(item) for item in items)
    if repeated := sorted(k for k, n in counts.items() if n > 1):
        raise ConfigError(f"{where}: {noun} {', '.join(repeated)} appears more than once")
