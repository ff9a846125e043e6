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
        assert "gpt-4o" in text and "claude-sonnet" in text and "$4.00" in text and "$1.25" in text
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
    assert sorted(m.subject.rsplit(" reached ", 1)[1] for m in mail.outbox) == ["25% (now 80%)", "75% (now 80%)"]
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


def refused(party: Party, at: datetime, budget: Budget) -> UsageRecord:
    """The row the gate leaves when a hard budget refuses a request (see proxy.limits.check_limits)."""
    return UsageRecord.objects.create(tenant=party.tenant, key=party.key, endpoint="chat", public_model="gpt-4o",
                                      end_reason="rejected", error_code="insufficient_quota", status_code=429,
                                      gate={"denied_by": budget.pk, "held_micros": 40_000}, created_at=at)


def test_a_hard_budget_stuck_below_its_last_threshold_says_once_per_period_that_it_now_refuses(alice: Party) -> None:
    tokyo(alice)
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.01"), period="month",
                                   alert_thresholds="50,80,100")
    other = Budget.objects.create(tenant=alice.tenant, amount=Decimal("5"), period="month", hard=False)
    november = datetime(2026, 11, 20, tzinfo=UTC)
    spend(alice, november, 9_900)  # 99 %: the next hold does not fit, so spend never reaches 100 %
    assert [BudgetAlert.objects.get(pk=i).threshold for i in alerts.claim_crossings(now=november)] == [50, 80]
    assert alerts.claim_refusals(now=november) == []  # nothing refused yet
    refused(alice, november + timedelta(minutes=1), budget)
    refused(alice, november + timedelta(minutes=1), other)  # a soft budget never refuses: a forged row is ignored
    [alert_id] = alerts.claim_refusals(now=november + timedelta(minutes=5))
    alert = BudgetAlert.objects.get(pk=alert_id)
    assert (alert.budget, alert.kind, alert.spent_micros, alert.limit_micros) == (budget, "refusing", 9_900, 10_000)
    refused(alice, november + timedelta(minutes=6), budget)
    assert alerts.claim_refusals(now=november + timedelta(minutes=10)) == []  # once per period
    assert alerts.claim_crossings(now=november + timedelta(minutes=10)) == []  # and 100 % is still not crossed

    assert alerts.email_alert(alert_id) is True
    [email] = mail.outbox
    assert "is refusing requests (99% spent)" in email.subject
    assert "is now refusing requests" in email.body and "$0.0099 of $0.01 (99%)" in email.body

    # A refusal seen only after its period ended does not alert for the new one; a refusal in the new one does.
    december = datetime(2026, 12, 10, tzinfo=UTC)
    refused(alice, datetime(2026, 11, 29, tzinfo=UTC), budget)
    assert alerts.claim_refusals(now=december) == []
    refused(alice, december, budget)
    [again] = alerts.claim_refusals(now=december)
    assert BudgetAlert.objects.get(pk=again).period_start == datetime(2026, 11, 30, 15, tzinfo=UTC)


def test_the_gate_marks_the_budget_that_refused_and_the_scheduled_task_alerts(alice: Party) -> None:
    from django.test import Client

    from billing.models import Price
    from proxy import routing
    from proxy.services import ensure_demo_route

    ensure_demo_route()
    routing.invalidate()
    Price.objects.create(model="demo", input_per_million=Decimal("1000"), output_per_million=Decimal("2000"))
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.03"), period="month", alert_thresholds="100")
    spend(alice, datetime.now(UTC), 15_000)  # half spent: the next request may cost up to $0.028, more than is left
    body = {"model": "demo", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 10}
    response = Client().post("/v1/chat/completions", json.dumps(body), content_type="application/json",
                             headers=alice.auth)
    assert response.status_code == 429
    row = UsageRecord.objects.get(request_id=response["x-request-id"])
    assert row.gate["denied_by"] == budget.pk
    assert tasks.check_budget_alerts.delay().get() == 1  # nothing crossed; one budget now refusing
    [email] = mail.outbox
    assert "is refusing requests" in email.subject
    assert tasks.check_budget_alerts.delay().get() == 0 and len(mail.outbox) == 1


def test_the_email_shows_the_period_in_the_tenants_zone(alice: Party) -> None:
    Tenant.objects.filter(pk=alice.tenant.pk).update(timezone="Europe/Berlin")
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="month", alert_thresholds="50")
    november = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    spend(alice, november, 600_000)
    [alert_id] = alerts.claim_crossings(now=november)
    alerts.email_alert(alert_id)
    [email] = mail.outbox
    # November in Berlin is 2026-10-31 23:00 to 2026-11-30 23:00 UTC.
    for text in (email.body, email.alternatives[0][0]):
        assert "2026-11-01 00:00 to 2026-12-01 00:00 (Europe/Berlin)" in text
        assert "as of 2026-11-20 10:30 (Europe/Berlin)" in text
        assert "2026-10-31 23:00" not in text


def test_a_lifetime_budget_has_no_period_dates(alice: Party) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1.00"), period="lifetime", alert_thresholds="50")
    spend(alice, datetime.now(UTC), 600_000)
    [alert_id] = alerts.claim_crossings()
    alerts.email_alert(alert_id)
    [email] = mail.outbox
    assert "Period: lifetime" in email.body and "2000-01-01" not in email.body + email.alternatives[0][0]


def test_a_late_alert_names_its_threshold_and_the_spend_to_the_micro_dollar_and_skips_free_models(alice: Party) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.01"), period="month", alert_thresholds="50",
                          hard=False)
    now = datetime.now(UTC)
    spend(alice, now, 9_900, model="gpt-4o")  # the first look sees 99 %: the 50 % alert is late
    spend(alice, now, 0, model="free-model")
    [alert_id] = alerts.claim_crossings(now=now)
    alerts.email_alert(alert_id)
    [email] = mail.outbox
    assert email.subject.endswith("reached 50% (now 99%)")
    for text in (email.body, email.alternatives[0][0]):
        assert "crossed its 50% alert threshold" in text and "$0.005 of $0.01" in text
        assert "$0.0099" in text and "(99%)" in text
        assert "free-model" not in text and "gpt-4o" in text


def test_a_test_alert_is_marked_as_such_and_goes_to_the_contacts_and_the_signed_webhook(alice: Party) -> None:
    Tenant.objects.filter(pk=alice.tenant.pk).update(alert_webhook_url="https://hooks.example.com/t?token=s3cret",
                                                     contact_emails="ops@alice.example, fin@alice.example")
    tenant = Tenant.objects.get(pk=alice.tenant.pk)
    received: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(204)

    delivery = alerts.send_test_alert(tenant=tenant, client=httpx.Client(transport=httpx.MockTransport(receiver)))
    assert delivery.ok and delivery.emailed == ["ops@alice.example", "fin@alice.example"]
    [email] = mail.outbox
    assert "TEST" in email.subject and "No budget crossed a threshold" in email.body
    assert not BudgetAlert.objects.exists()  # a test claims nothing
    [request] = received
    payload = json.loads(request.content)
    assert (payload["type"], payload["test"], payload["tenant"]) == ("budget.test", True, "alice")
    stamp, digest = (part.split("=", 1)[1] for part in request.headers["x-tollgate-signature"].split(","))
    expected = hmac.new(tenant.alert_webhook_secret.encode(), f"{stamp}.".encode() + request.content,
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(digest, expected)
    summary = delivery.summary()
    assert "ops@alice.example" in summary and "hooks.example.com" in summary and "204" in summary
    assert "s3cret" not in summary  # the webhook's URL may carry credentials: only its host is named


def test_a_failed_test_alert_says_what_failed_instead_of_raising(alice: Party) -> None:
    Tenant.objects.filter(pk=alice.tenant.pk).update(alert_webhook_url="https://hooks.example.com/t", contact_emails="")
    tenant = Tenant.objects.get(pk=alice.tenant.pk)
    failing = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(500)))
    delivery = alerts.send_test_alert(tenant=tenant, client=failing)
    assert not delivery.ok and mail.outbox == []
    assert "no contact emails" in delivery.summary() and "the webhook failed" in delivery.summary()
    Tenant.objects.filter(pk=alice.tenant.pk).update(alert_webhook_url="", contact_emails="ops@alice.example")
    with mock.patch("django.core.mail.EmailMultiAlternatives.send", side_effect=ConnectionRefusedError("smtp down")):
        delivery = alerts.send_test_alert(tenant=Tenant.objects.get(pk=alice.tenant.pk))
    assert "the email failed (ConnectionRefusedError: smtp down)" in delivery.summary()
    assert "no webhook is set" in delivery.summary()
