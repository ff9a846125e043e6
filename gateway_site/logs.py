"""Log records that say which request they belong to, as plain text or one JSON object per line, never with a secret.

``TOLLGATE_LOG_FORMAT`` picks the formatter in settings.LOGGING. The /v1 path puts its request in
``request_context``; ``RequestFilter`` copies what it knows (request id, trace id, tenant, key prefix, model,
status, durations) onto every record logged while that request runs. Both formatters blank out API keys,
management tokens, bearer credentials, provider keys and the configured secrets, from the message and the traceback.

Loaded by the logging configuration before the apps are ready: nothing here imports a model.
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from django.conf import settings


class RequestContext(Protocol):
    def log_fields(self) -> dict[str, Any]: ...


request_context: ContextVar[RequestContext | None] = ContextVar("tollgate_request_context", default=None)

# Copied from the request onto each record, and written by the JSON formatter when a record has them.
CONTEXT_FIELDS = ("request_id", "trace_id", "tenant", "key_prefix", "endpoint", "model", "provider", "status",
                  "end_reason", "elapsed_ms", "ttfb_ms")

REDACTED = "[redacted]"
_PATTERNS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    # Tollgate API keys (tg-<id>-<secret>) and management tokens (tgm-<id>-<secret>): the public id stays.
    (re.compile(r"\b(tgm?-[0-9a-f]{12})-[A-Za-z0-9_\-]+"), lambda m: f"{m[1]}-{REDACTED}"),
    # Provider keys in their usual shapes: OpenAI and most compatible vendors (sk-…, sk-proj-…), Anthropic (sk-ant-…).
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), lambda m: f"sk-{REDACTED}"),
    (re.compile(r"\b(Bearer|Basic)\s+[^\s\"',;]+", re.IGNORECASE), lambda m: f"{m[1]} {REDACTED}"),
    # A header or setting printed with its value: Authorization: …, 'x-api-key': '…', api_key=…
    (re.compile(r"((?:proxy-)?authorization|x-api-key|api[_-]?key|token|password|secret)(['\"]?\s*[:=]\s*['\"]?)"
                r"(?!Bearer\b|Basic\b)[^\s\"',;}]+", re.IGNORECASE), lambda m: f"{m[1]}{m[2]}{REDACTED}"),
)
_SECRET_SETTINGS = ("TOLLGATE_OPS_TOKEN", "TOLLGATE_KEY_PEPPER", "SECRET_KEY", "TOLLGATE_CREDENTIALS_KEY")


def configured_secrets() -> list[str]:
    try:
        values = [getattr(settings, name, "") for name in _SECRET_SETTINGS]
    except Exception:  # settings not configured (a bare import): only the patterns apply
        return []
    return [value for value in values if isinstance(value, str) and len(value) >= 8]


def redact(text: str) -> str:
    """The text with every credential Tollgate can recognise replaced by [redacted]."""
    for secret in configured_secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RequestFilter(logging.Filter):
    """Adds the running /v1 request's fields to each record (on the handler, so every logger's records get them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = request_context.get()
        if context is not None:
            for name, value in context.log_fields().items():
                if not hasattr(record, name):  # a field passed with extra= wins
                    setattr(record, name, value)
        return True


class PlainFormatter(logging.Formatter):
    """The classic one-line format, with credentials blanked out."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request's fields, and the traceback as a string."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str)
