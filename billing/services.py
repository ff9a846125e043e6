from __future__ import annotations

import functools
import logging
from typing import Any
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection
from django.db.models import Field
from django.utils import timezone

from . import tokens
from .models import UsageRecord

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


def record_usage(*, entry: UsageEntry) -> UsageRecord:
    """Write the request's one ledger row, estimating tokens the provider did not report. Returns it (id not read back)."""
    source = UsageRecord.Source.PROVIDER
    prompt, completion = entry.prompt_tokens, entry.completion_tokens
    if prompt is None or completion is None:
        source = UsageRecord.Source.ESTIMATED
        model = entry.upstream_model or entry.public_model
        if prompt is None:
            counter = tokens.count_messages if entry.chat else tokens.count
            prompt = counter(entry.prompt_texts, model=model) if entry.prompt_texts else 0
        if completion is None:
            completion = tokens.count([entry.completion_text], model=model)
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
        created_at=entry.created_at or timezone.now(),
    )
    if entry.request_id:
        record.request_id = entry.request_id
    insert(record)
    return record


@functools.cache
def _insert_sql(vendor: str) -> tuple[str, tuple[Field[Any, Any], ...]]:
    fields = tuple(f for f in UsageRecord._meta.concrete_fields if not f.primary_key)
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    return f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})", fields


def insert(record: UsageRecord) -> None:
    # One plain INSERT: the ledger is append-only with no save signals, and Model.save's bookkeeping
    # was a tenth of the CPU of a /v1 request. The row's id is not needed, so it is not read back.
    sql, fields = _insert_sql(connection.vendor)
    values = [f.get_db_prep_save(getattr(record, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
