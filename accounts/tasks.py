"""Periodic account work, scheduled by Celery beat (Periodic tasks in the admin)."""

from __future__ import annotations

import logging

from celery import shared_task

from . import services

logger = logging.getLogger(__name__)


@shared_task
def notify_expiring_keys() -> int:
    """Queue one expiry notice per key that expires within a week."""
    ids = services.keys_expiring_soon()
    for key_id in ids:
        send_key_expiry_notice.delay(key_id)
    if ids:
        logger.info("expiry notices queued for %d keys", len(ids))
    return len(ids)


@shared_task(autoretry_for=(Exception,), retry_backoff=30, retry_backoff_max=3600, max_retries=8)
def send_key_expiry_notice(key_id: int) -> bool:
    return services.send_expiry_notice(key_id=key_id)
