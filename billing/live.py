"""The live usage feed: each written ledger row goes to its tenant's channel group, for the live page."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

logger = logging.getLogger(__name__)


def group(tenant_id: int) -> str:
    return f"usage.tenant.{tenant_id}"


def enabled() -> bool:
    return bool(getattr(settings, "CHANNEL_LAYERS", None)) and settings.TOLLGATE_LIVE_FEED


def event(record: Any) -> dict[str, Any]:
    """What a live page shows of one row: never the prompt, the answer, or anything of another tenant."""
    return {
        "request_id": str(record.request_id), "at": record.created_at.isoformat(), "model": record.public_model,
        "key_id": record.key_id, "end_reason": record.end_reason, "status": record.status_code,
        "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
        "cost_micros": record.cost_micros, "latency_ms": record.latency_ms,
    }


async def publish(records: list[Any]) -> None:
    """One message per tenant per batch of rows."""
    layer = get_channel_layer()
    if layer is None:
        return
    by_tenant: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_tenant[record.tenant_id].append(event(record))
    for tenant_id, rows in by_tenant.items():
        try:
            await layer.group_send(group(tenant_id), {"type": "usage.rows", "rows": rows})
        except Exception:
            logger.warning("live usage feed: could not publish %d rows of tenant %s", len(rows), tenant_id, exc_info=True)
