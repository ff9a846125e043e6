"""Periodic billing work, scheduled by Celery beat (Periodic tasks in the admin; defaults from a migration).

Each task takes ids (or nothing) and calls one service; failures retry with backoff, and the services make
a retry safe: rollups rebuild whole windows, alerts are claimed once and sent at most once.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from . import alerts, holds, rollups

logger = logging.getLogger(__name__)
RETRY = {"autoretry_for": (Exception,), "retry_backoff": 30, "retry_backoff_max": 3600, "max_retries": 8}


@shared_task
def reap_expired_holds() -> int:
    """Release budget holds whose lease ran out: their process died before settling."""
    released = holds.reap_expired()
    if released:
        logger.warning("released %d budget holds left by requests that never settled", released)
    return released


@shared_task(**RETRY)
def roll_up_usage() -> int:
    """Roll up the ledger rows written since the last run; a backlog continues in the next task at once."""
    run = rollups.roll_up()
    logger.info("rolled up %d ledger rows into %d rollups (%d hours, %d days)", run.rows_read, run.rollups, run.hours,
                run.days)
    if run.rows_read >= rollups.CHUNK:
        roll_up_usage.delay()
    return run.rows_read


@shared_task(**RETRY)
def check_budget_alerts() -> int:
    """Claim every threshold crossed by a budget this period, and every hard budget's first refusal in it, and queue
    each one's email (and webhook)."""
    crossings, refusals = alerts.claim_crossings(), alerts.claim_refusals()
    for alert_id in crossings + refusals:
        send_budget_alert.delay(alert_id)
        deliver_budget_webhook.delay(alert_id)
    logger.info("budget alerts: %d new threshold crossings, %d budgets now refusing", len(crossings), len(refusals))
    return len(crossings) + len(refusals)


@shared_task(**RETRY)
def send_budget_alert(alert_id: int) -> bool:
    return alerts.email_alert(alert_id)


@shared_task(**RETRY)
def deliver_budget_webhook(alert_id: int) -> bool:
    return alerts.post_webhook(alert_id)


@shared_task(**RETRY)
def prune_ledger() -> int:
    """Delete ledger rows older than TOLLGATE_LEDGER_RETENTION_DAYS that the rollups already hold."""
    run = rollups.prune(retention_days=settings.TOLLGATE_LEDGER_RETENTION_DAYS)
    if run.before is not None:
        logger.info("pruned %d ledger rows from before %s", run.deleted, run.before.isoformat())
    return run.deleted
