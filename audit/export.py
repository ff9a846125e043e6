"""Audit entries as rows for CSV and JSON downloads (the admin's export actions and the Activity page's links).

Operators see every actor and client address. A tenant's owners see those of their members and former members; a
change an operator (a staff user who is not a member) made to their tenant shows as "operator", without the
operator's name or address.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import tzinfo
from typing import Any, TypedDict

from auditlog.models import LogEntry
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse

from billing import export

CHUNK = 2_000
HEADER = ["time", "action", "verb", "model", "object_id", "object", "actor", "source", "remote_addr", "tenant",
          "changes"]
OPERATOR = "operator"


class Row(TypedDict):
    time: str
    action: str
    verb: str
    model: str
    object_id: str
    object: str
    actor: str
    source: str
    remote_addr: str | None
    tenant: int | None
    changes: dict[str, Any]


def for_export(entries: QuerySet[LogEntry]) -> QuerySet[LogEntry]:
    return entries.select_related("content_type", "actor")


def row(entry: LogEntry, *, zone: tzinfo | None = None, members: frozenset[int] | None = None) -> Row:
    """One entry as plain values; with ``members`` (a tenant's view) only those users' names and addresses show."""
    data = entry.additional_data or {}
    # A former member (removed since) is still shown by name; only operators stay anonymous to a tenant.
    operator = entry.actor is not None and (entry.actor.is_staff or entry.actor.is_superuser)
    known = members is None or entry.actor_id in members or not operator
    actor = entry.actor.get_username() if entry.actor else (entry.actor_email or "")
    return Row(
        time=(entry.timestamp.astimezone(zone) if zone else entry.timestamp).isoformat(),
        action=entry.get_action_display().lower(),
        verb=str(data.get("verb", "")),
        model=f"{entry.content_type.app_label}.{entry.content_type.model}",
        object_id=entry.object_pk,
        object=entry.object_repr,
        actor=actor if known else (OPERATOR if entry.actor_id else ""),
        source=str(data.get("source", "")),
        remote_addr=entry.remote_addr if known else None,
        tenant=data.get("tenant"),
        changes=entry.changes if isinstance(entry.changes, dict) else {},
    )


def rows(entries: QuerySet[LogEntry], **options: Any) -> Iterator[Row]:
    for entry in for_export(entries).iterator(chunk_size=CHUNK):
        yield row(entry, **options)


def csv_response(request: HttpRequest, entries: QuerySet[LogEntry], *, filename: str, **options: Any) -> StreamingHttpResponse:
    """The entries as a streamed CSV file; the changes column holds their JSON."""
    lines = ([*(r[name] for name in HEADER[:-1]), json.dumps(r["changes"], ensure_ascii=False)]  # type: ignore[literal-required]
             for r in rows(entries, **options))
    return export.csv_response(request, filename=filename, header=HEADER, rows=lines)


def json_lines(items: Iterable[Row]) -> Iterator[str]:
    yield "["
    for index, item in enumerate(items):
        yield ("," if index else "") + "\n" + json.dumps(item, ensure_ascii=False)
    yield "\n]\n"


def json_response(request: HttpRequest, entries: QuerySet[LogEntry], *, filename: str, **options: Any) -> StreamingHttpResponse:
    """The entries as a streamed JSON array of objects with the CSV's columns (changes as an object)."""
    lines = json_lines(rows(entries, **options))
    content: Iterator[str] | AsyncIterator[str] = (
        export.abatches(lines) if isinstance(request, ASGIRequest) else export.batches(lines))
    response = StreamingHttpResponse(content, content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response
