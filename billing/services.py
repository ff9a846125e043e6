from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import DatabaseError, connection
from django.db.models import Field
from django.utils import timezone

from accounts.models import ApiKey

from . import pricing, tokens
from .models import Budget, UsageRecord

logger = logging.getLogger(__name__)


@dataclass
class UsageEntry:
    """Everything the /v1 path knows about one request when it ends."""

    tenant_id: int
    key_id: int | None
    endpoint: str
    end_reason: str
    status_code: int
    public_model: str = ""
    provider: str = ""
    upstream_model: str = ""
    stream: bool = False
    prompt_tokens: int | None = None  # None: the provider reported no usage, estimate from the texts below
    completion_tokens: int | None = None
    cached_tokens: int = 0
    prompt_texts: list[str] = field(default_factory=list)
    completion_text: str = ""
    chat: bool = True
    error_code: str = ""
    latency_ms: int = 0
    ttfb_ms: int | None = None
    request_id: str | None = None
    created_at: datetime | None = None
    gate: dict[str, Any] = field(default_factory=dict)


def carry_key_budgets(*, old: ApiKey, new: ApiKey) -> int:
    """Move the budgets of a rotated key to its replacement; their periods keep what the old key spent."""
    moved = 0
    for budget in Budget.objects.filter(key=old):
        budget.key = new
        budget.save(update_fields=["key"])  # the signal drops this process's budget table
        moved += 1
    return moved


def record_usage(*, entry: UsageEntry) -> UsageRecord:
    """Write one request's ledger row, estimating tokens the provider did not report. Returns it (id not read back)."""
    record = build_record(entry)
    insert_many([record])
    return record


def record_usages(*, entries: list[UsageEntry]) -> list[UsageRecord]:
    """Write the rows of several requests in one INSERT. If that fails, each row is tried alone.

    Returns the rows (with their tokens and cost). Raises the error of the first row that could not be
    written, after trying all of them.
    """
    records = [build_record(entry) for entry in entries]
    try:
        insert_many(records)  # one statement: all rows or none
        return records
    except DatabaseError:
        if len(records) == 1:
            raise
        logger.warning("a batch of %d usage rows failed; writing them one by one", len(records))
    failure: DatabaseError | None = None
    for record in records:
        try:
            insert_many([record])
        except DatabaseError as e:
            failure = failure or e
    if failure is not None:
        raise failure
    return records


def build_record(entry: UsageEntry) -> UsageRecord:
    source = UsageRecord.Source.PROVIDER
    prompt, completion = entry.prompt_tokens, entry.completion_tokens
    if prompt is None or completion is None:
        source = UsageRecord.Source.ESTIMATED
        estimated = tokens.estimate(entry.prompt_texts, entry.completion_text,
                                    model=entry.upstream_model or entry.public_model, chat=entry.chat)
        prompt = estimated[0] if prompt is None else prompt
        completion = estimated[1] if completion is None else completion
    record = UsageRecord(
        tenant_id=entry.tenant_id,
        key_id=entry.key_id,
        endpoint=entry.endpoint,
        public_model=entry.public_model[:200],
        provider=entry.provider,
        upstream_model=entry.upstream_model[:200],
        stream=entry.stream,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=entry.cached_tokens,
        usage_source=source,
        end_reason=entry.end_reason,
        error_code=entry.error_code[:64],
        status_code=entry.status_code,
        latency_ms=entry.latency_ms,
        ttfb_ms=entry.ttfb_ms,
        gate=entry.gate,
        created_at=entry.created_at or timezone.now(),
    )
    if entry.request_id:
        record.request_id = entry.request_id
    price_record(record)
    return record


def price_record(record: UsageRecord) -> None:
    """Set the row's cost from the price in force on its day; a model with no price is flagged, at zero cost."""
    if not record.upstream_model or record.ttfb_ms is None:
        return  # no answer ever came back (refused, failed or abandoned first): nothing to pay
    price = pricing.price_for(public_model=record.public_model, provider=record.provider,
                              upstream_model=record.upstream_model, on=record.created_at.date())
    if price is None:
        record.unpriced = True
        return
    record.price = price
    record.cost_micros = price.cost_micros(prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
                                           cached_tokens=record.cached_tokens)


@functools.cache
def _insert_sql() -> tuple[str, str, tuple[Field[Any, Any], ...]]:
    fields = tuple(f for f in UsageRecord._meta.concrete_fields if not f.primary_key)
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    return f"INSERT INTO {table} ({columns}) VALUES ", "(" + ", ".join(["%s"] * len(fields)) + ")", fields


def insert_many(records: list[UsageRecord]) -> None:
    # One plain multi-row INSERT: the ledger is append-only with no save signals, and Model.save's
    # bookkeeping was a tenth of the CPU of a /v1 request. Ids are not needed, so none are read back.
    head, row, fields = _insert_sql()
    values = [f.get_db_prep_save(getattr(record, f.attname), connection) for record in records for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(head + ", ".join([row] * len(records)), values)
