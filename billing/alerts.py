"""Budget alerts: one per threshold per period, by email to the tenant's contacts and, if set, a signed webhook.

Claiming is a row insert under a unique constraint, so two schedulers running at once still create one alert.
Sending claims the alert's "sent" mark with a conditional UPDATE first: a second sender (a retry racing a slow
first try) finds it taken and sends nothing. If sending fails, the mark is given back and the task retries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

import httpx
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.template.loader import render_to_string
from django.utils import timezone

from accounts import webhooks

from . import budgets
from .models import Budget, BudgetAlert, UsageRecord, micros_to_dollars, parse_thresholds, picos_to_dollars

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 10.0


def claim_crossings(*, now: datetime | None = None) -> list[int]:
    """Create an alert for every threshold an active budget has crossed in its current period. Returns new ids."""
    now = now or timezone.now()
    claimed = []
    for budget in Budget.objects.filter(is_active=True).select_related("tenant", "key"):
        state = budgets.status(budget, now=now)
        if state.limit_micros <= 0:
            continue
        for threshold in parse_thresholds(budget.alert_thresholds):
            if state.spent_micros * 100 < threshold * state.limit_micros:
                break  # thresholds are sorted: none above this one is crossed either
            try:
                with transaction.atomic():
                    alert = BudgetAlert.objects.create(
                        budget=budget, period_start=state.starts_at, threshold=threshold,
                        spent_micros=state.spent_micros, limit_micros=state.limit_micros, created_at=now)
            except IntegrityError:
                continue  # claimed already, by an earlier run or by another scheduler right now
            claimed.append(alert.pk)
    return claimed


@dataclass(frozen=True)
class AlertMessage:
    subject: str
    text: str
    html: str
    recipients: list[str]


def message(alert: BudgetAlert) -> AlertMessage:
    budget, tenant = alert.budget, alert.budget.tenant
    zone = zoneinfo.ZoneInfo(tenant.timezone)
    start = alert.period_start
    _, end = budgets.period_bounds(budget.period, tenant.timezone, start)
    rows = UsageRecord.objects.filter(tenant=tenant, created_at__gte=start)
    if end is not None:
        rows = rows.filter(created_at__lt=end)
    if budget.key_id:
        rows = rows.filter(key_id__in=budgets.key_lineage(budget.key_id))
    top_models = [(r["public_model"] or "(none)", shown(r["cost"]))
                  for r in rows.values("public_model").annotate(cost=Sum("cost_picos")).order_by("-cost")[:5]]
    top_keys = [(r["key__name"] or "(deleted key)", r["key__prefix"] or "", shown(r["cost"]))
                for r in rows.values("key__name", "key__prefix").annotate(cost=Sum("cost_picos")).order_by("-cost")[:5]]
    context = {
        "tenant": tenant, "budget": budget, "threshold": alert.threshold,
        "spent": micros_to_dollars(alert.spent_micros).quantize(Decimal("0.01")),
        "limit": micros_to_dollars(alert.limit_micros).quantize(Decimal("0.01")),
        "percent": alert.spent_micros * 100 // alert.limit_micros,
        "period_start": start.astimezone(zone), "period_end": end.astimezone(zone) if end else None,
        "top_models": top_models, "top_keys": top_keys,
        "link": f"{settings.TOLLGATE_PUBLIC_URL}/budgets/",
    }
    subject = f"[Tollgate] {tenant.name}: {budget} reached {alert.threshold}%"
    return AlertMessage(subject=subject, text=render_to_string("billing/email/budget_alert.txt", context),
                        html=render_to_string("billing/email/budget_alert.html", context),
                        recipients=tenant.contact_email_list())


def shown(picos: int | None) -> Decimal:
    """Dollars to the micro-dollar for an email, half up; the exact figure is in the ledger."""
    return picos_to_dollars(picos or 0).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def email_alert(alert_id: int, *, now: datetime | None = None) -> bool:
    """Email the alert to the tenant's contacts, at most once. Returns whether this call sent it."""
    now = now or timezone.now()
    if not BudgetAlert.objects.filter(pk=alert_id, email_sent_at__isnull=True).update(email_sent_at=now):
        return False  # sent already, or being sent by another worker
    alert = BudgetAlert.objects.select_related("budget__tenant", "budget__key").get(pk=alert_id)
    mail = message(alert)
    if not mail.recipients:
        logger.warning("budget alert %s: tenant %s has no contact emails", alert_id, alert.budget.tenant.slug)
        return False
    try:
        email = EmailMultiAlternatives(mail.subject, mail.text, to=mail.recipients)
        email.attach_alternative(mail.html, "text/html")
        email.send()
    except Exception:
        BudgetAlert.objects.filter(pk=alert_id).update(email_sent_at=None)  # give the mark back for the retry
        raise
    logger.info("budget alert %s sent to %d contacts: %s", alert_id, len(mail.recipients), mail.subject)
    return True


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Tollgate-Signature value: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def webhook_payload(alert: BudgetAlert) -> dict[str, object]:
    budget = alert.budget
    return {
        "id": f"budget_alert_{alert.pk}", "type": "budget.threshold_crossed",
        "tenant": budget.tenant.slug, "budget": {"id": budget.pk, "name": str(budget), "period": budget.period,
                                                  "scope": budget.scope_label, "hard": budget.hard},
        "period_start": alert.period_start.isoformat(), "threshold_percent": alert.threshold,
        "spent_usd": str(micros_to_dollars(alert.spent_micros)), "limit_usd": str(micros_to_dollars(alert.limit_micros)),
        "created_at": alert.created_at.isoformat(),
    }


def post_webhook(alert_id: int, *, now: datetime | None = None, client: httpx.Client | None = None) -> bool:
    """POST the alert to the tenant's webhook, signed, at most once. Raises on failure so the task retries."""
    now = now or timezone.now()
    alert = BudgetAlert.objects.select_related("budget__tenant", "budget__key").get(pk=alert_id)
    tenant = alert.budget.tenant
    if not tenant.alert_webhook_url:
        return False
    if not BudgetAlert.objects.filter(pk=alert_id, webhook_sent_at__isnull=True).update(webhook_sent_at=now):
        return False
    body = json.dumps(webhook_payload(alert), separators=(",", ":")).encode()
    headers = {"content-type": "application/json", "user-agent": "Tollgate",
               "x-tollgate-event-id": f"budget_alert_{alert.pk}",
               "x-tollgate-signature": signature(tenant.alert_webhook_secret, int(time.time()), body)}
    try:
        # Private, loopback and link-local targets are refused, also when a name resolves to one (accounts/webhooks.py).
        response = webhooks.post(tenant.alert_webhook_url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT,
                                 http=client)
        response.raise_for_status()
    except Exception as e:
        BudgetAlert.objects.filter(pk=alert_id).update(webhook_sent_at=None)
        # The receiver's address may embed credentials: name the tenant, not the URL (a refusal names only an address).
        reason = str(e) if isinstance(e, webhooks.WebhookRefused) else type(e).__name__
        raise WebhookFailed(f"webhook of tenant {tenant.slug} failed: {reason}") from None
    logger.info("budget alert %s posted to the webhook of tenant %s", alert_id, tenant.slug)
    return True


class WebhookFailed(Exception):
    """The tenant's webhook did not answer 2xx; the task retries with backoff."""
