"""Reading audit entries back in tests."""

from __future__ import annotations

from auditlog.models import LogEntry
from django.db import models


def entries_for(instance: models.Model) -> list[LogEntry]:
    return list(LogEntry.objects.get_for_object(instance).order_by("pk"))


def last_for(instance: models.Model) -> LogEntry:
    found = entries_for(instance)
    assert found, f"no audit entry for {instance!r}"
    return found[-1]


def source(entry: LogEntry) -> str:
    return str((entry.additional_data or {}).get("source"))


def entries_of(model: type[models.Model], pk: object) -> list[LogEntry]:
    """Entries of a row that may be gone (a deleted instance has no pk left)."""
    return list(LogEntry.objects.filter(content_type__app_label=model._meta.app_label,
                                        content_type__model=model._meta.model_name, object_pk=str(pk)).order_by("pk"))
