"""Closing the journals of processes that died: every request they began gets its one row and its settlement.

The policy for a request that was still running (documented in the README):

- its row says ``gateway_lost`` with status 502, and is priced like any other row;
- prompt tokens: the count the gate made at admission, else the prompt's texts counted by the tokenizer;
- completion tokens: the provider's usage if a checkpoint saw it, else the text relayed up to the last
  checkpoint (at most about a second before the process died) counted by the tokenizer;
- its budget hold settles at that cost and its in-flight slots are freed.

A request that had ended but was not yet written or settled is written and settled as it ended. Both steps are
idempotent (rows are unique by request id; a settled hold is marked), so a file replayed twice bills once.
"""

from __future__ import annotations

import fcntl
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings

from . import holds, journal, keyspace, scripts
from .journal import Lost
from .ledger import record_from, request_id_of
from .models import UsageRecord
from .scripts import Call
from .services import UsageEntry, build_records, insert_records

logger = logging.getLogger(__name__)

def lost_entry(lost: Lost) -> UsageEntry:
    """The row of a request its process did not finish, by the policy above."""
    begin = {**(lost.begin or {}), **(lost.serving or {})}  # priced by the deployment it was asking last
    usage = lost.usage or {}
    relayed = "".join(lost.texts)
    return UsageEntry(
        request_id=lost.request_id,
        tenant_id=begin["tenant_id"],
        key_id=begin.get("key_id"),
        endpoint=begin.get("endpoint", "chat"),
        end_reason=UsageRecord.EndReason.GATEWAY_LOST,
        status_code=502,
        public_model=begin.get("public_model", ""),
        provider=begin.get("provider", ""),
        upstream_model=begin.get("upstream_model", ""),
        stream=bool(begin.get("stream")),
        prompt_tokens=usage.get("prompt_tokens", begin.get("prompt_tokens")),
        completion_tokens=usage.get("completion_tokens"),
        cached_tokens=usage.get("cached_tokens", 0),
        cache_write_tokens=usage.get("cache_write_tokens", 0),
        images=begin.get("images", 0),
        prompt_texts=begin.get("prompt_texts") or [],
        completion_text=relayed,
        chat=bool(begin.get("chat", True)),
        gate={**(begin.get("gate") or {}), "recovered": True},
        ttfb_ms=0,  # the provider was called: what it took is billed even if nothing reached the client
        created_at=datetime.fromtimestamp(begin["at"], tz=UTC) if "at" in begin else None,
        batch_id=begin.get("batch_id") or "",
        custom_id=begin.get("custom_id") or "",
        project_id=begin.get("project_id"),
        tags=begin.get("tags") or "",
        end_user=begin.get("end_user") or "",
    )


def rows_to_write(requests: dict[str, Lost]) -> list[UsageRecord]:
    """The rows a dead process owed: ended ones as they ended, the others by the lost-request policy."""
    records = [record_from(lost.row) for lost in requests.values() if lost.row is not None and not lost.written]
    lost = [lost_entry(lost) for lost in requests.values() if lost.row is None and lost.begin is not None]
    return records + build_records(lost)


def costs(requests: dict[str, Lost], records: list[UsageRecord]) -> dict[str, int]:
    """The cost in picos each unsettled request settles at."""
    built = {request_id_of(r): r.cost_picos for r in records}
    result: dict[str, int] = {}
    for request_id, lost in requests.items():
        if lost.settled or lost.begin is None or not (lost.begin.get("hold") or lost.begin.get("slots")):
            continue
        if lost.row is not None:
            result[request_id] = int(lost.row.get("cost_picos", 0))
        else:
            result[request_id] = built.get(request_id, 0)
    return result


async def settle_lost(requests: dict[str, Lost], owed: dict[str, int]) -> None:
    """Settle each unsettled hold at its cost and free its slots. Raises if Redis or the database is down."""
    backend = holds.backend()
    for request_id, cost in owed.items():
        begin = requests[request_id].begin or {}
        hold = begin.get("hold")
        if hold:
            await backend.settle(holds.Hold(request_id, int(hold.get("amount", 0)), [], True, list(hold["keys"])), cost)
        # Slots in keys of the old layout (a journal written before an upgrade) were not carried over: nothing to free.
        slots = [key for key in begin.get("slots") or [] if keyspace.tenant_of(key) is not None]
        if slots and settings.TOLLGATE_MONEY_REDIS_URL:
            await scripts.run(settings.TOLLGATE_MONEY_REDIS_URL, [Call(scripts.ZREM_ALL, slots, [request_id])])


def replay_rows(path: Path) -> tuple[dict[str, Lost], dict[str, int], int]:
    """Read a dead process's file and write the rows it owed (on the database thread). Returns what to settle."""
    requests = journal.read(path)
    records = rows_to_write(requests)
    if records:
        insert_records(records)
    return requests, costs(requests, records), len(records)


async def recover(run_on_db_thread: Any) -> int:
    """Replay every journal file whose process is gone. Returns how many rows were written.

    ``run_on_db_thread(func, *args)`` runs a sync function where the ORM may be used. A file whose replay fails
    (the database or Redis is down) is left for the next try, unlocked.
    """
    book = journal.journal()
    written = 0
    for path, fd in list(journal.orphans(book.directory, book.own_paths())):
        try:
            requests, owed, count = await run_on_db_thread(replay_rows, path)
            await settle_lost(requests, owed)
            path.unlink(missing_ok=True)
            written += count
            if count or owed:
                logger.warning("recovered journal %s: %d rows written, %d holds or slots settled",
                               path.name, count, len(owed))
        except Exception as e:
            logger.warning("journal %s could not be recovered yet (%s); retrying later", path.name, type(e).__name__)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    return written
