"""Writing ledger rows so that none is ever lost: journal first, then the database, spooled while it is down.

``write_rows`` runs on the database thread (see proxy/db.py). It builds the rows (tokens and cost; this never
fails), appends them to the journal, then inserts them. If the database cannot be reached the rows stay in
this process's spool and in the journal, and ``write_spooled`` (called every second) inserts them once the
database is back. The caller gets the rows either way: their costs settle the budgets at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from typing import Any

from django.db import InterfaceError, OperationalError, connection

from .journal import journal
from .models import UsageRecord
from .services import UsageEntry, build_records, insert_records

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # while the database is down, a batch goes straight to the spool; a retry every second
_spool: list[UsageRecord] = []  # touched only on the database thread
_down_since: float | None = None
_last_try = 0.0


def row_fields(record: UsageRecord) -> dict[str, Any]:
    """The row's column values as JSON, to be read back by ``record_from``."""
    values: dict[str, Any] = {}
    for f in UsageRecord._meta.concrete_fields:
        if f.primary_key:
            continue
        value = getattr(record, f.attname)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, uuid.UUID):
            value = value.hex
        values[f.attname] = value
    return values


def record_from(values: dict[str, Any]) -> UsageRecord:
    fields = {f.attname: f for f in UsageRecord._meta.concrete_fields if not f.primary_key}
    return UsageRecord(**{name: fields[name].to_python(value) for name, value in values.items() if name in fields})


def request_id_of(record: UsageRecord) -> str:
    value = record.request_id
    return value.hex if isinstance(value, uuid.UUID) else uuid.UUID(str(value)).hex


def write_rows(entries: list[UsageEntry]) -> list[UsageRecord]:
    """Build, journal and insert the rows; returns them, written or spooled. Never raises for a database outage."""
    records = build_records(entries)
    ids = [request_id_of(r) for r in records]
    book = journal()
    book.ended(zip(ids, [row_fields(r) for r in records]))
    if not insert_or_spool(records, ids):
        book.unwritten(ids)
    return records


def insert_or_spool(records: list[UsageRecord], ids: list[str]) -> bool:
    global _down_since, _last_try
    if _down_since is not None and time.monotonic() - _last_try < RETRY_SECONDS:
        _spool.extend(records)
        return False
    try:
        insert_records(records)
    except (OperationalError, InterfaceError) as e:
        if not connection.in_atomic_block:
            connection.close()  # the next attempt reconnects
        _last_try = time.monotonic()
        if _down_since is None:
            _down_since = _last_try
            logger.error("database unavailable (%s); ledger rows are kept in the journal and written when it is back",
                         type(e).__name__)
        _spool.extend(records)
        return False
    if _down_since is not None:
        logger.warning("database back after %.1f s", time.monotonic() - _down_since)
        _down_since = None
    journal().written(ids)
    return True


def write_spooled() -> int:
    """Insert the rows spooled during an outage. Returns how many are still waiting."""
    global _down_since, _last_try
    if not _spool:
        return 0
    batch = _spool[:1000]
    del _spool[:1000]
    _down_since = _down_since or time.monotonic()
    _last_try = 0.0  # always try now
    insert_or_spool(batch, [request_id_of(r) for r in batch])
    return len(_spool)


def spooled() -> int:
    return len(_spool)
