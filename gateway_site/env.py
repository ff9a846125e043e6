"""Reading settings from the environment: each helper raises ImproperlyConfigured naming the variable it could not read."""

from __future__ import annotations

import json
import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {raw!r}")


def env_micros(name: str, default: str) -> int:
    """A dollar amount from the environment, as integer micro-dollars (never a float)."""
    raw = os.environ.get(name, default).strip()
    try:
        dollars = Decimal(raw)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a dollar amount such as 5 or 0.25, got {raw!r}") from None
    if not dollars.is_finite() or dollars < 0:
        raise ImproperlyConfigured(f"{name} must be a dollar amount of zero or more, got {raw!r}")
    return int(dollars * 1_000_000)


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_secret(name: str, *, dev_default: str | None = None, debug: bool = False, generated: Path | None = None) -> str:
    """Read NAME, or the file named by NAME_FILE (Docker secrets), or else the ``generated`` file when it exists
    (the one `./tollgate run` writes on the embedded default). Only DEBUG may fall back to a default."""
    value = os.environ.get(name)
    path = os.environ.get(f"{name}_FILE")
    if value and path:
        raise ImproperlyConfigured(f"Set either {name} or {name}_FILE, not both")
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as e:
            raise ImproperlyConfigured(f"{name}_FILE points at {path!r}, which cannot be read: {e.strerror}") from None
    elif not value and generated is not None and generated.exists():
        try:
            value = generated.read_text().strip()
        except OSError as e:
            raise ImproperlyConfigured(f"{name} is unset and {generated} cannot be read: {e.strerror}") from None
    if value:
        return value
    if debug and dev_default is not None:
        return dev_default
    hint = f" (on the embedded default, `./tollgate run` or `./tollgate manage` writes {generated})" if generated else ""
    raise ImproperlyConfigured(f"{name} (or {name}_FILE) must be set when DJANGO_DEBUG is off{hint}")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_queue_numbers(name: str, default: str, queues: dict[str, str], *, minimum: int = 0) -> dict[str, int]:
    """A number per Celery queue, "high=64,default=32,low=8": by tier (high, default, low) or by queue name.

    Returns the numbers by queue name; a queue not named keeps the default's number, if it has one."""
    numbers: dict[str, int] = {}
    for raw in (default, os.environ.get(name, "")):
        for item in raw.split(","):
            if not item.strip():
                continue
            queue, _, value = item.partition("=")
            queue, value = queue.strip(), value.strip()
            if not queue or not value.isdigit() or int(value) < minimum:
                raise ImproperlyConfigured(f"{name} must be queue=number pairs (each at least {minimum}), "
                                           f"separated by commas; got {item.strip()!r}")
            numbers[queues.get(queue, queue)] = int(value)
    return numbers


def env_json_object(name: str) -> dict[str, Any]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object")
    return value


def env_proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """A header name such as X-Forwarded-Proto, as Django's SECURE_PROXY_SSL_HEADER (its value "https" means HTTPS)."""
    header = os.environ.get(name, "").strip()
    if not header:
        return None
    if not header.replace("-", "").isalnum() or not header.isascii():
        raise ImproperlyConfigured(f"{name} must be a header name such as X-Forwarded-Proto, got {header!r}")
    return "HTTP_" + header.upper().replace("-", "_"), "https"


def sqlite_database(path: Path) -> dict[str, Any]:
    # Default SQLite options lose about half of 100 concurrent writing requests to "database is
    # locked"; WAL, an immediate write lock and a long busy timeout serialise them instead.
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
        },
    }


def database_from_url(url: str, *, pool_min: int, pool_max: int) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured("DATABASE_URL must name a database, e.g. postgres://user@host:5432/tollgate")
        options: dict[str, Any] = dict(parse_qsl(parts.query))
        # Django's pool needs CONN_MAX_AGE = 0; connections go back to the pool after each request.
        # Fail within seconds when PostgreSQL is unreachable: ledger rows are then spooled, not waited for.
        options.setdefault("connect_timeout", 3)
        options["pool"] = {"min_size": pool_min, "max_size": pool_max, "timeout": 3}
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": 0,
            "OPTIONS": options,
        }
    if parts.scheme == "sqlite":
        # sqlite:////abs/path.db is absolute, sqlite:///rel/path.db relative (as with dj-database-url).
        return sqlite_database(Path(unquote(parts.path[1:])))
    raise ImproperlyConfigured(f"DATABASE_URL must start with postgres://, postgresql:// or sqlite://, got {parts.scheme!r}://")


def redis_url(name: str) -> str | None:
    url = os.environ.get(name, "").strip()
    if url and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ImproperlyConfigured(f"{name} must be a redis://, rediss:// or unix:// URL")
    return url or None
