"""Writing ledger rows so that none is ever lost: journal first, then the database, spooled while it is down.

``write_rows`` runs on the database thread (see proxy/db.py). It builds the rows (tokens and cost; this never
fails), appends them to the journal, then inserts them. If the database cannot be reached the rows stay in
this process's spool and in the journal, and ``write_spooled`` (called every second) inserts them once the
database is back. The caller gets the rows either way: their costs settle the budgets at once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from django.db import InterfaceError, OperationalError, connection

from .journal import journal
from .models import UsageRecord
from .services import UsageEntry, build_records, insert_records

logger = logging.getLogger(__name__)

_spool: list[UsageRecord] = []  # rows waiting for the database; guarded by _lock
_lock = threading.Lock()
_down_since: float | None = None  # set while the database is known to be down


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
    """Insert the rows, or spool them if the database is down. While it is known to be down nothing is tried
    here, so requests never wait on a dead database: ``write_spooled`` probes it every second instead."""
    global _down_since
    if _down_since is not None:
        with _lock:
            _spool.extend(records)
        return False
    try:
        insert_records(records)
    except (OperationalError, InterfaceError) as e:
        if not connection.in_atomic_block:
            connection.close()  # the next attempt reconnects
        with _lock:
            _spool.extend(records)
        if _down_since is None:
            _down_since = time.monotonic()
            logger.error("database unavailable (%s); ledger rows are kept in the journal and written when it is back",
                         type(e).__name__)
        return False
    journal().written(ids)
    return True


def write_spooled() -> int:
    """Insert the rows spooled during an outage, oldest first. Returns how many still wait.

    Meant for a thread of its own (not the database thread the requests use), since a dead database can
    block a connection attempt for seconds.
    """
    global _down_since
    while True:
        with _lock:
            batch = _spool[:1000]
            del _spool[:1000]
        if not batch:
            break
        try:
            insert_records(batch)
        except (OperationalError, InterfaceError):
            if not connection.in_atomic_block:
                connection.close()
            with _lock:
                _spool[:0] = batch
            return len(_spool)
        journal().written([request_id_of(r) for r in batch])
    if _down_since is not None:
        logger.warning("database back after %.1f s; spooled ledger rows written", time.monotonic() - _down_since)
        _down_since = None
    return 0


def spooled() -> int:
    return len(_spool)


def is_down() -> bool:
    return _down_since is not None
