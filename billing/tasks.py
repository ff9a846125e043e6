"""Periodic billing work, scheduled by Celery beat (see CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import logging

from celery import shared_task

from . import holds

logger = logging.getLogger(__name__)


@shared_task
def reap_expired_holds() -> int:
    """Release budget holds whose lease ran out: their process died before settling."""
    released = holds.reap_expired()
    if released:
        logger.warning("released %d budget holds left by requests that never settled", released)
    return released
