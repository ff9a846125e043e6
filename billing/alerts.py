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
import uuid
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import Max, Min, Sum
from django.template.loader import render_to_string
from django.utils import timezone

from accounts import webhooks
from accounts.models import Tenant

from . import budgets, rollups, scopes
from .models import PICOS_PER_MICRO, Budget, BudgetAlert, RollupState, UsageRecord, micros_to_dollars, parse_thresholds

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 10.0


def claim_crossings(*, now: datetime | None = None) -> list[int]:
    """Create an alert for every threshold an active budget has crossed in its current period. Returns new ids."""
    now = now or timezone.now()
    claimed = []
    for budget in Budget.objects.filter(is_active=True).select_related("tenant", "key", "project"):
        state = budgets.status(budget, now=now)
        if state.limit_micros <= 0:
            continue
        for threshold in parse_thresholds(budget.alert_thresholds):
            if state.spent_micros * 100 < threshold * state.limit_micros:
                break  # thresholds are sorted: none above this one is crossed either
            alert_id = claim(budget, state, BudgetAlert.Kind.THRESHOLD, threshold, now)
            if alert_id is not None:
                claimed.append(alert_id)
    return claimed


def claim_refusals(*, now: datetime | None = None) -> list[int]:
    """Create a "now refusing" alert for every hard budget that refused a request in its current period, once.

    A hard budget stops spend short of its amount (the next hold does not fit), so its 100 % alert may never come.
    Its refusals are found in the ledger: the gate marks a refused request's row with the budget's id
    (gate.denied_by), and this reads the rows written since its last run, by id, as the rollups do.
    Returns the new alert ids.
    """
    now = now or timezone.now()
    refused_by = refusals_since_last_run(now)
    if not refused_by:
        return []
    claimed = []
    hard = Budget.objects.filter(pk__in=list(refused_by), is_active=True, hard=True).select_related(
        "tenant", "key", "project")
    for budget in hard.order_by("pk"):
        state = budgets.status(budget, now=now)
        if refused_by[budget.pk] < state.starts_at or state.limit_micros <= 0:
            continue  # refused in a period that has ended: this period has not refused yet
        alert_id = claim(budget, state, BudgetAlert.Kind.REFUSING, 100, now)
        if alert_id is not None:
            claimed.append(alert_id)
    return claimed


REFUSALS = "refusal_alerts"  # the RollupState row: how far claim_refusals has read the ledger


def refusals_since_last_run(now: datetime) -> dict[int, datetime]:
    """Budget id -> its latest refusal among the ledger rows written since the last run."""
    with transaction.atomic():
        if not RollupState.objects.filter(name=REFUSALS).exists():
            RollupState.objects.get_or_create(name=REFUSALS, defaults={"last_record_id": first_id_since(now - LOOK_BACK)})
        state = RollupState.objects.select_for_update().get(name=REFUSALS)
        newest = UsageRecord.objects.aggregate(newest=Max("id"))["newest"] or 0
        if newest <= state.last_record_id:
            return {}
        # Rows commit slightly out of id order: read a little behind the watermark (a claim is made once anyway).
        rows = UsageRecord.objects.filter(id__gt=max(state.last_record_id - rollups.ID_OVERLAP, 0), id__lte=newest,
                                          end_reason=UsageRecord.EndReason.REJECTED, error_code="insufficient_quota")
        refused: dict[int, datetime] = {}
        for gate, at in rows.values_list("gate", "created_at").iterator():
            budget_id = gate.get("denied_by") if isinstance(gate, dict) else None
            if isinstance(budget_id, int):
                refused[budget_id] = max(at, refused.get(budget_id, at))
        state.last_record_id = newest
        state.save(update_fields=["last_record_id", "updated_at"])
    return refused


LOOK_BACK = timedelta(days=32)  # a first run reads back over the longest calendar period that resets


def first_id_since(moment: datetime) -> int:
    """The watermark a first run starts from: just before the first ledger row written since ``moment``."""
    first = UsageRecord.objects.filter(created_at__gte=moment).aggregate(first=Min("id"))["first"]
    return first - 1 if first else UsageRecord.objects.aggregate(newest=Max("id"))["newest"] or 0


def claim(budget: Budget, state: budgets.BudgetStatus, kind: str, threshold: int, now: datetime) -> int | None:
    """Insert the alert row, the claim; None when it exists (an earlier run, or another scheduler right now)."""
    try:
        with transaction.atomic():
            return BudgetAlert.objects.create(
                budget=budget, period_start=state.starts_at, kind=kind, threshold=threshold,
                spent_micros=state.spent_micros, limit_micros=state.limit_micros, created_at=now).pk
    except IntegrityError:
        return None


@dataclass(frozen=True)
class AlertMessage:
    subject: str
    text: str
    html: str
    recipients: list[str]


def message(alert: BudgetAlert) -> AlertMessage:
    budget, tenant = alert.budget, alert.budget.tenant
    start = alert.period_start
    _, end = budgets.period_bounds(budget.period, tenant.timezone, start)
    rows = UsageRecord.objects.filter(tenant=tenant, created_at__gte=start)
    if end is not None:
        rows = rows.filter(created_at__lt=end)
    if budget.key_id:
        rows = rows.filter(key_id__in=budgets.key_lineage(budget.key_id))
    # A narrower budget's top spenders are among the rows it counts.
    rows = rows.filter(scopes.ledger_q(project_id=budget.project_id, model=budget.model, tag=budget.tag,
                                       end_user=budget.end_user))
    spending = rows.filter(cost_picos__gt=0)  # a model or key that cost nothing is not a top spender
    top_models = [(r["public_model"] or "(none)", shown(r["cost"]))
                  for r in spending.values("public_model").annotate(cost=Sum("cost_picos")).order_by("-cost")[:5]]
    top_keys = [(r["key__name"] or "(deleted key)", r["key__prefix"] or "", shown(r["cost"]))
                for r in spending.values("key__name", "key__prefix").annotate(cost=Sum("cost_picos")).order_by("-cost")[:5]]
    spent, limit = alert.spent_micros, alert.limit_micros
    percent = spent * 100 // limit
    refusing = alert.kind == BudgetAlert.Kind.REFUSING
    context = {
        "tenant": tenant, "budget": budget, "refusing": refusing, "threshold": alert.threshold,
        "threshold_amount": budgets.usd(-(-limit * alert.threshold // 100)),
        "spent": budgets.usd(spent), "limit": budgets.usd(limit), "percent": percent,
        "as_of": local_time(alert.created_at, tenant.timezone), "period": period_text(budget, start, end),
        "top_models": top_models, "top_keys": top_keys,
        "link": f"{settings.TOLLGATE_PUBLIC_URL}/budgets/",
    }
    if refusing:
        subject = f"[Tollgate] {tenant.name}: {budget} is refusing requests ({percent}% spent)"
    else:
        now_at = f" (now {percent}%)" if percent != alert.threshold else ""
        subject = f"[Tollgate] {tenant.name}: {budget} reached {alert.threshold}%{now_at}"
    return AlertMessage(subject=subject, text=render_to_string("billing/email/budget_alert.txt", context),
                        html=render_to_string("billing/email/budget_alert.html", context),
                        recipients=tenant.contact_email_list())


def local_time(moment: datetime, zone: str) -> str:
    # Formatted here, not with the template's |date, which would convert to the active time zone once more.
    return f"{moment.astimezone(zoneinfo.ZoneInfo(zone)):%Y-%m-%d %H:%M}"


def period_text(budget: Budget, start: datetime, end: datetime | None) -> str:
    """The period in the tenant's local time, with its zone; a lifetime budget has no period."""
    zone = budget.tenant.timezone
    if end is None:
        return "lifetime (this budget never resets)"
    return f"{local_time(start, zone)} to {local_time(end, zone)} ({zone})"


def shown(picos: int | None) -> str:
    """A ledger cost to the micro-dollar (half up) for an email; the exact figure is in the ledger."""
    micros = int((Decimal(picos or 0) / PICOS_PER_MICRO).to_integral_value(rounding=ROUND_HALF_UP))
    return "<$0.000001" if picos and not micros else budgets.usd(micros)


def email_alert(alert_id: int, *, now: datetime | None = None) -> bool:
    """Email the alert to the tenant's contacts, at most once. Returns whether this call sent it."""
    now = now or timezone.now()
    if not BudgetAlert.objects.filter(pk=alert_id, email_sent_at__isnull=True).update(email_sent_at=now):
        return False  # sent already, or being sent by another worker
    alert = BudgetAlert.objects.select_related("budget__tenant", "budget__key", "budget__project").get(
        pk=alert_id)
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
        "id": f"budget_alert_{alert.pk}",
        "type": "budget.refusing" if alert.kind == BudgetAlert.Kind.REFUSING else "budget.threshold_crossed",
        "tenant": budget.tenant.slug, "budget": {"id": budget.pk, "name": str(budget), "period": budget.period,
                                                  "scope": budget.scope_label, "hard": budget.hard},
        "period_start": alert.period_start.isoformat(), "threshold_percent": alert.threshold,
        "spent_usd": str(micros_to_dollars(alert.spent_micros)), "limit_usd": str(micros_to_dollars(alert.limit_micros)),
        "created_at": alert.created_at.isoformat(),
    }


def post_webhook(alert_id: int, *, now: datetime | None = None, client: httpx.Client | None = None) -> bool:
    """POST the alert to the tenant's webhook, signed, at most once. Raises on failure so the task retries."""
    now = now or timezone.now()
    alert = BudgetAlert.objects.select_related("budget__tenant", "budget__key", "budget__project").get(
        pk=alert_id)
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


@dataclass(frozen=True)
class Delivery:
    """Where a test alert went, for the operator who sent it."""

    emailed: list[str]
    email_error: str
    webhook: str  # what the webhook answered, or "" without one
    webhook_error: str

    @property
    def ok(self) -> bool:
        return not self.email_error and not self.webhook_error

    def summary(self) -> str:
        if self.email_error:
            email = f"the email failed ({self.email_error})"
        elif self.emailed:
            email = f"emailed to {', '.join(self.emailed)} via {mail_destination()}"
        else:
            email = "no email: the tenant has no contact emails"
        if self.webhook_error:
            return f"{email}; the webhook failed: {self.webhook_error}"
        return f"{email}; {self.webhook}" if self.webhook else f"{email}; no webhook is set"


def send_test_alert(*, tenant: Tenant, client: httpx.Client | None = None) -> Delivery:
    """Send a test alert, marked as such, to the tenant's contacts and webhook. Returns where it went; a failed
    delivery is reported in it, not raised."""
    now = timezone.now()
    context = {"tenant": tenant, "sent_at": local_time(now, tenant.timezone),
               "link": f"{settings.TOLLGATE_PUBLIC_URL}/budgets/"}
    recipients, email_error = tenant.contact_email_list(), ""
    if recipients:
        email = EmailMultiAlternatives(f"[Tollgate] TEST alert for {tenant.name}: nothing was crossed",
                                       render_to_string("billing/email/test_alert.txt", context), to=recipients)
        email.attach_alternative(render_to_string("billing/email/test_alert.html", context), "text/html")
        try:
            email.send()
        except Exception as e:
            email_error = f"{type(e).__name__}: {e}"
    webhook, webhook_error = "", ""
    if tenant.alert_webhook_url:
        host = urlsplit(tenant.alert_webhook_url).hostname or "?"  # never the whole URL: it may hold credentials
        event_id = f"test_{uuid.uuid4().hex}"
        body = json.dumps({"id": event_id, "type": "budget.test", "test": True, "tenant": tenant.slug,
                           "created_at": now.isoformat()}, separators=(",", ":")).encode()
        headers = {"content-type": "application/json", "user-agent": "Tollgate", "x-tollgate-event-id": event_id,
                   "x-tollgate-signature": signature(tenant.alert_webhook_secret, int(time.time()), body)}
        try:
            response = webhooks.post(tenant.alert_webhook_url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT,
                                     http=client)
            response.raise_for_status()
            webhook = f"posted to the webhook at {host}, which answered {response.status_code}"
        except webhooks.WebhookRefused as e:
            webhook_error = str(e)
        except Exception as e:
            webhook_error = f"the webhook at {host}: {type(e).__name__}"
    logger.info("test alert for tenant %s: %d contacts emailed, webhook %s", tenant.slug,
                0 if email_error else len(recipients), "failed" if webhook_error else "posted" if webhook else "none")
    return Delivery(emailed=recipients, email_error=email_error, webhook=webhook, webhook_error=webhook_error)


def mail_destination() -> str:
    """Where this server's emails go, in words: an SMTP server, the outbox folder, the console."""
    backend = settings.EMAIL_BACKEND
    if backend.endswith("smtp.EmailBackend"):
        return f"the SMTP server {settings.EMAIL_HOST}:{settings.EMAIL_PORT}"
    if backend.endswith(("OutboxBackend", "filebased.EmailBackend")):
        return f"the outbox folder {settings.EMAIL_FILE_PATH}"
    if backend.endswith("console.EmailBackend"):
        return "the server's console output"
    if backend.endswith("locmem.EmailBackend"):
        return "the in-memory outbox (tests)"
    return backend
