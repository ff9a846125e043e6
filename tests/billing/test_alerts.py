"""Budget alerts and key expiry notices: once per threshold and period, emails, signed webhooks, retries."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from unittest import mock

import httpx
import pytest
from celery.exceptions import Retry
from django.core import mail
from django.db import connection

from accounts import services
from accounts.models import ApiKey, Tenant
from billing import alerts, tasks
from billing.models import Budget, BudgetAlert, UsageRecord

from ..conftest import Party

pytestmark = pytest.mark.django_db


def spend(party: Party, at: datetime, micros: int, model: str = "gpt-4o") -> None:
    UsageRecord.objects.create(tenant=party.tenant, key=party.key, endpoint="chat", public_model=model,
                               end_reason="complete", status_code=200, cost_picos=micros * 10**6, created_at=at)


def tokyo(alice: Party) -> None:
    Tenant.objects.filter(pk=alice.tenant.pk).update(timezone="Asia/Tokyo")


def test_the_alert_ladder_climbs_once_per_threshold_and_starts_again_next_period(alice: Party) -> None:
    tokyo(alice)
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10.00"), period="month", hard=False)
    # November in Tokyo starts at 2026-10-31 15:00 UTC.
    spend(alice, datetime(2026, 10, 31, 14, 59, tzinfo=UTC), 9_000_000)  # still October in Tokyo
    november = datetime(2026, 11, 20, tzinfo=UTC)
    assert alerts.claim_crossings(now=november) == []
    spend(alice, datetime(2026, 10, 31, 15, 0, tzinfo=UTC), 5_500_000)  # the first minute of November in Tokyo
    assert [BudgetAlert.objects.get(pk=i).threshold for i in alerts.claim_crossings(now=november)] == [50]
    spend(alice, november, 3_000_000)
    assert [BudgetAlert.objects.get(pk=i).threshold for i in alerts.claim_crossings(now=november)] == [80]
    assert alerts.claim_crossings(now=november) == []
    spend(alice, november, 2_000_000)  # $10.50 of $10: a soft budget alerts at 100 % too
    assert [BudgetAlert.objects.get(pk=i).threshold for i in alerts.claim_crossings(now=november)] == [100]
    december = datetime(2026, 12, 10, tzinfo=UTC)
    spend(alice, december, 8_100_000)
    assert [BudgetAlert.objects.get(pk=i).threshold for i in alerts.claim_crossings(now=december)] == [50, 80]
    periods = sorted({a.period_start for a in BudgetAlert.objects.filter(budget=budget)})
    assert periods == [datetime(2026, 10, 31, 15, tzinfo=UTC), datetime(2026, 11, 30, 15, tzinfo=UTC)]


@pytest.mark.needs_postgres  # SQLite serializes writers: the race needs PostgreSQL
@pytest.mark.django_db(transaction=True)
def test_two_alert_runs_at_once_claim_and_send_each_alert_once(alice: Party) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="day")
    spend(alice, datetime.now(UTC), 900_000)
    barrier, claimed = threading.Barrier(2), []

    def run() -> None:
        try:
            barrier.wait()
            claimed.extend(alerts.claim_crossings())
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(claimed) == 2 and BudgetAlert.objects.count() == 2  # 50 % and 80 %, once each
    sent = []

    def send(alert_id: int) -> None:
        try:
            barrier.wait()
            sent.append(alerts.email_alert(alert_id))
        finally:
            connection.close()

    for alert_id in claimed:
        threads = [threading.Thread(target=send, args=(alert_id,)) for _ in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert sorted(sent) == [False, False, True, True] and len(mail.outbox) == 2


def test_the_email_names_the_budget_the_spend_and_where_it_went(alice: Party, bob: Party, settings: object) -> None:
    settings.TOLLGATE_PUBLIC_URL = "https://gw.example.com"  # type: ignore[attr-defined]
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("10.00"), period="month", name="Team budget")
    now = datetime.now(UTC)
    spend(alice, now, 4_000_000, model="gpt-4o")
    spend(alice, now, 1_250_000, model="claude-sonnet")
    spend(bob, now, 9_000_000, model="bobs-model")
    [alert_id] = alerts.claim_crossings(now=now)
    assert alerts.email_alert(alert_id) is True
    [email] = mail.outbox
    assert email.to == ["alice@example.com"] and "Team budget reached 50%" in email.subject
    for text in (email.body, email.alternatives[0][0]):
        assert "$5.25" in text and "$10.00" in text and "52%" in text
        assert "gpt-4o" in text and "claude-sonnet" in text and "$4.000000" in text
        assert "alice&#x27;s key" in text or "alice's key" in text
        assert "https://gw.example.com/budgets/" in text
        assert "bob" not in text  # another tenant's spend never shows
    assert email.alternatives[0][1] == "text/html"
    assert alerts.email_alert(alert_id) is False and len(mail.outbox) == 1


def test_a_failed_send_gives_the_mark_back_and_the_retry_sends_it(alice: Party) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="day")
    spend(alice, datetime.now(UTC), 600_000)
    [alert_id] = alerts.claim_crossings()
    with mock.patch("django.core.mail.EmailMultiAlternatives.send", side_effect=ConnectionRefusedError("smtp down")):
        with pytest.raises(ConnectionRefusedError):
            alerts.email_alert(alert_id)
    assert BudgetAlert.objects.get(pk=alert_id).email_sent_at is None
    assert alerts.email_alert(alert_id) is True and len(mail.outbox) == 1


def test_the_scheduled_task_emails_each_crossing_once(alice: Party) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="week", alert_thresholds="25,75")
    spend(alice, datetime.now(UTC), 800_000)
    assert tasks.check_budget_alerts.delay().get() == 2  # eager in tests, as a worker would run it
    assert sorted(m.subject[-3:] for m in mail.outbox) == ["25%", "75%"]
    assert tasks.check_budget_alerts.delay().get() == 0 and len(mail.outbox) == 2


def test_the_webhook_is_signed_and_retried_until_it_answers(alice: Party) -> None:
    Tenant.objects.filter(pk=alice.tenant.pk).update(alert_webhook_url="https://hooks.example.com/tollgate")
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="day")
    spend(alice, datetime.now(UTC), 500_000)
    [alert_id] = alerts.claim_crossings()
    secret = Tenant.objects.get(pk=alice.tenant.pk).alert_webhook_secret
    received: list[httpx.Request] = []
    answers = iter([503, 200])

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(next(answers))

    with pytest.raises(alerts.WebhookFailed) as failed:
        alerts.post_webhook(alert_id, client=httpx.Client(transport=httpx.MockTransport(receiver)))
    assert "hooks.example.com" not in str(failed.value) and BudgetAlert.objects.get(pk=alert_id).webhook_sent_at is None
    assert alerts.post_webhook(alert_id, client=httpx.Client(transport=httpx.MockTransport(receiver))) is True
    assert alerts.post_webhook(alert_id, client=httpx.Client(transport=httpx.MockTransport(receiver))) is False
    request = received[-1]
    stamp, digest = (part.split("=", 1)[1] for part in request.headers["x-tollgate-signature"].split(","))
    expected = hmac.new(secret.encode(), f"{stamp}.".encode() + request.content, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(digest, expected) and len(received) == 2
    payload = json.loads(request.content)
    assert (payload["type"], payload["tenant"], payload["threshold_percent"], payload["spent_usd"]) == (
        "budget.threshold_crossed", "alice", 50, "0.500000")


def test_each_tenant_has_its_own_webhook_secret(alice: Party, bob: Party) -> None:
    secrets = set(Tenant.objects.values_list("alert_webhook_secret", flat=True))
    assert len(secrets) == 2 and all(s.startswith("whsec_") and len(s) > 40 for s in secrets)


def test_keys_expiring_within_a_week_get_one_notice(alice: Party) -> None:
    now = datetime.now(UTC)
    soon, _ = services.issue_key(tenant=alice.tenant, name="ci", expires_at=now + timedelta(days=3))
    later, _ = services.issue_key(tenant=alice.tenant, name="later", expires_at=now + timedelta(days=10))
    gone, _ = services.issue_key(tenant=alice.tenant, name="gone", expires_at=now + timedelta(days=2))
    services.revoke_key(key=gone)
    assert services.keys_expiring_soon(now=now) == [soon.pk]
    from accounts import tasks as account_tasks

    assert account_tasks.notify_expiring_keys.delay().get() == 1
    [email] = mail.outbox
    assert "ci expires" in email.subject and f"tg-{soon.prefix}-" in email.body and email.to == ["alice@example.com"]
    assert account_tasks.notify_expiring_keys.delay().get() == 0 and len(mail.outbox) == 1
    assert ApiKey.objects.get(pk=later.pk).expiry_notified_at is None


def test_a_failing_send_task_retries_and_sends_once(alice: Party) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="day", alert_thresholds="10")
    spend(alice, datetime.now(UTC), 200_000)
    [alert_id] = alerts.claim_crossings()
    real_send = mail.EmailMultiAlternatives.send
    attempts = []

    def flaky(message: mail.EmailMultiAlternatives, fail_silently: bool = False) -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionRefusedError("smtp down")
        return real_send(message, fail_silently)

    with mock.patch.object(mail.EmailMultiAlternatives, "send", flaky):
        with pytest.raises(Retry):  # a worker would run it again later, with backoff
            tasks.send_budget_alert.delay(alert_id)
        assert BudgetAlert.objects.get(pk=alert_id).email_sent_at is None
        assert tasks.send_budget_alert.delay(alert_id).get() is True  # the retry
        assert tasks.send_budget_alert.delay(alert_id).get() is False  # a duplicate delivery of the task
    assert len(attempts) == 2 and len(mail.outbox) == 1
    assert tasks.send_budget_alert.retry_backoff and tasks.send_budget_alert.max_retries == 8
