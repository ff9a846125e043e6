from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

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
    """Write the request's one ledger row, estimating tokens the provider did not report. Returns the row."""
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
    record.save(force_insert=True)
    return record
