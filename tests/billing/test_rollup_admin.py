"""Rollups, alerts and beat schedules in the admin."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta

import pytest
from django.apps import apps
from django.test import Client
from django.utils import timezone

from billing import rollups
from billing.models import UsageRecord

from ..conftest import Party

pytestmark = pytest.mark.django_db


def spend(party: Party, at: datetime, micros: int, model: str = "gpt-4o") -> None:
    UsageRecord.objects.create(tenant=party.tenant, key=party.key, endpoint="chat", public_model=model,
                               end_reason="complete", status_code=200, cost_picos=micros * 10**6, prompt_tokens=100,
                               completion_tokens=20, created_at=at)


def test_rollups_list_days_by_default_with_totals_and_hours_on_request(admin_client: Client, alice: Party) -> None:
    day = datetime(2026, 11, 20, 10, tzinfo=UTC)
    spend(alice, day, 1_500_000)
    spend(alice, day + timedelta(hours=2), 250_000, model="claude")
    rollups.roll_up()
    days = admin_client.get("/admin/billing/usagerollup/")
    assert days.status_code == 200 and days.context["totals"]["cost"] == "$1.75"
    assert days.context["totals"]["requests"] == 2 and days.context["cl"].result_count == 2
    assert 'id="rollup-totals"' in days.content.decode()
    hours = admin_client.get("/admin/billing/usagerollup/", {"granularity": "hour", "model": "claude"})
    assert hours.context["totals"]["cost"] == "$0.25" and hours.context["cl"].result_count == 1
    dated = admin_client.get("/admin/billing/usagerollup/", {"bucket__year": "2026", "bucket__month": "11"})
    assert dated.status_code == 200 and dated.context["cl"].result_count == 2
    assert admin_client.get("/admin/billing/usagerollup/add/").status_code == 403


def test_the_tenant_page_charts_its_own_last_30_days(admin_client: Client, alice: Party, bob: Party) -> None:
    now = timezone.now()
    spend(alice, now - timedelta(days=2), 2_000_000)
    spend(alice, now - timedelta(days=40), 9_000_000)  # older than 30 days
    spend(bob, now - timedelta(days=1), 7_000_000)
    rollups.roll_up()
    page = admin_client.get(f"/admin/accounts/tenant/{alice.tenant.pk}/change/").content.decode()
    assert 'role="img" aria-label="Spend per day, last 30 days: $2.00 in total"' in page
    assert page.count("<rect ") == 30 and "$7.00" not in page and "$9.00" not in page
    assert "whsec_" in page  # the webhook secret to share with the receiver


def test_alerts_and_beat_schedules_have_admin_pages(admin_client: Client, alice: Party) -> None:
    assert admin_client.get("/admin/billing/budgetalert/").status_code == 200
    # The defaults a migration creates (rows from migrations are gone in a flushed test database: run it again).
    migration = importlib.import_module("billing.migrations.0005_default_schedules")
    migration.create_schedules(apps, None)
    migration.create_schedules(apps, None)  # once only
    page = admin_client.get("/admin/django_celery_beat/periodictask/")
    for name in ("Roll up usage", "Send budget alerts", "Release expired budget holds",
                 "Notify keys that expire within a week", "Prune the ledger past its retention"):
        assert page.content.decode().count(name) >= 1
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    assert PeriodicTask.objects.filter(name="Roll up usage").count() == 1
    assert PeriodicTask.objects.get(name="Send budget alerts").interval.every == 5
