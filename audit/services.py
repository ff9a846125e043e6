from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from auditlog.cid import get_cid
from auditlog.diff import model_instance_diff
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.conf import settings
from django.db import models
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.encoding import smart_str

from . import context

logger = logging.getLogger(__name__)


def record_update(*, instance: models.Model, changes: dict[str, tuple[object, object]], verb: str = "") -> LogEntry:
    """Write an update entry for a change made with QuerySet.update(), which sends no signal. Returns the entry."""
    verb = context.current_verb() or verb  # a revocation inside a rotation is part of the rotation
    entry = LogEntry.objects.log_create(
        instance, action=LogEntry.Action.UPDATE,
        changes={field: [smart_str(old), smart_str(new)] for field, (old, new) in changes.items()},  # as auditlog's diff
        additional_data={**instance.get_additional_data(), **({"verb": verb} if verb else {})},  # type: ignore[attr-defined]
    )
    return entry  # type: ignore[no-any-return]


def record_updates(*, instances: Iterable[models.Model], changes: dict[str, tuple[object, object]],
                   verb: str = "") -> int:
    """record_update for many rows changed by one UPDATE, written in one INSERT. Returns how many entries."""
    from .registry import stamp

    verb = context.current_verb() or verb
    text = {field: [smart_str(old), smart_str(new)] for field, (old, new) in changes.items()}
    entries = []
    for instance in instances:
        entry = LogEntry(
            content_type=ContentType.objects.get_for_model(instance), object_pk=smart_str(instance.pk),
            object_id=instance.pk if isinstance(instance.pk, int) else None, object_repr=smart_str(instance),
            action=LogEntry.Action.UPDATE, changes=text, cid=get_cid(),
            additional_data={**instance.get_additional_data(), **({"verb": verb} if verb else {})},  # type: ignore[attr-defined]
        )
        stamp(LogEntry, entry)  # bulk_create sends no pre_save
        entries.append(entry)
    return len(LogEntry.objects.bulk_create(entries, batch_size=500))


def record_saved(*, rows: Iterable[tuple[models.Model | None, models.Model]]) -> int:
    """Entries for rows written by bulk_create (old is None) or bulk_update (old is the row as it was), which send
    no signal, diffed as auditlog diffs a save. Returns how many entries were written."""
    from .registry import stamp

    rows = list(rows)
    # Diff what the database holds (Decimal("2.5") and "2.50" are one value, stored once), not the objects given.
    stored: dict[type[models.Model], dict[Any, models.Model]] = {}
    for model in {type(new) for _, new in rows}:
        stored[model] = model._base_manager.in_bulk([new.pk for _, new in rows if type(new) is model])
    entries = []
    for old, given in rows:
        new = stored[type(given)][given.pk]
        changes = model_instance_diff(old, new)
        if not changes:
            continue
        entry = LogEntry(
            content_type=ContentType.objects.get_for_model(new), object_pk=smart_str(new.pk),
            object_id=new.pk if isinstance(new.pk, int) else None, object_repr=smart_str(new), cid=get_cid(),
            action=LogEntry.Action.CREATE if old is None else LogEntry.Action.UPDATE, changes=changes,
            additional_data=new.get_additional_data(),  # type: ignore[attr-defined]
        )
        stamp(LogEntry, entry)
        entries.append(entry)
    return len(LogEntry.objects.bulk_create(entries, batch_size=500))


def tenant_entries(tenant_id: int) -> QuerySet[LogEntry]:
    """A tenant's entries, newest first (what its owners see on the Activity page)."""
    return LogEntry.objects.filter(additional_data__tenant=tenant_id).order_by("-timestamp", "-pk")


def prune_entries(*, now: datetime | None = None) -> int:
    """Delete entries older than TOLLGATE_AUDIT_RETENTION_DAYS (0 keeps them forever). Returns how many went."""
    days = settings.TOLLGATE_AUDIT_RETENTION_DAYS
    if not days:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted, _ = LogEntry.objects.filter(timestamp__lt=cutoff).delete()
    if deleted:
        logger.info("audit log: %s entries older than %s days pruned", deleted, days)
    return deleted
