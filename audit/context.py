"""Where the change being recorded comes from: the request that made it (source, client address, actor) or, when no
request is running (a management command, a Celery task, a shell), the command line.

The request is kept as it is and read only when an entry is written, because the management API's user is known
only after DRF authenticates, inside the view, long after the middleware ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from django.http import HttpRequest

ADMIN, API, PAGE, COMMAND = "admin", "api", "page", "command"
SOURCES = (ADMIN, API, PAGE, COMMAND)


@dataclass(frozen=True, slots=True)
class Origin:
    source: str
    request: HttpRequest | None = None


_origin: ContextVar[Origin | None] = ContextVar("tollgate_audit_origin", default=None)
_verb: ContextVar[str | None] = ContextVar("tollgate_audit_verb", default=None)


def source_of(path: str) -> str:
    if path.startswith("/admin/"):
        return ADMIN
    if path.startswith("/api/"):
        return API
    return PAGE


def current() -> Origin:
    return _origin.get() or Origin(COMMAND)


def current_verb() -> str | None:
    return _verb.get()


@contextlib.contextmanager
def origin(value: Origin) -> Iterator[None]:
    token = _origin.set(value)
    try:
        yield
    finally:
        _origin.reset(token)


@contextlib.contextmanager
def verb(name: str) -> Iterator[None]:
    """Name the action (e.g. "rotate") on every entry written inside, when the plain create/update says too little."""
    token = _verb.set(name)
    try:
        yield
    finally:
        _verb.reset(token)
