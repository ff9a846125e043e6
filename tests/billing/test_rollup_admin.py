"""Rollups, alerts and beat schedules in the admin."""

from __future__ import annotations

import csv
import importlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

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


def served(party: Party, at: datetime, *, model: str, provider: str, picos: int, latency: int, ttfb: int | None) -> None:
    UsageRecord.objects.create(tenant=party.tenant, key=party.key, endpoint="chat", public_model=model, provider=provider,
                               end_reason="complete", status_code=200, cost_picos=picos, prompt_tokens=10,
                               completion_tokens=5, latency_ms=latency, ttfb_ms=ttfb, created_at=at)


def test_rollups_show_provider_percentiles_and_a_summary_per_model_and_provider(admin_client: Client, alice: Party,
                                                                                 bob: Party) -> None:
    day = datetime(2026, 11, 20, 10, tzinfo=UTC)
    served(alice, day, model="gpt-4o", provider="openai", picos=1, latency=100, ttfb=40)
    served(alice, day + timedelta(minutes=1), model="gpt-4o", provider="azure", picos=2 * 10**12, latency=300, ttfb=90)
    served(bob, day, model="gpt-4o", provider="azure", picos=5, latency=200, ttfb=None)
    rollups.roll_up()
    page = admin_client.get("/admin/billing/usagerollup/")
    html = page.content.decode()
    for column in ("column-provider", "Latency p50 / p95 / p99 ms", "First byte p50 / p95 ms"):
        assert column in html
    assert "<td class=\"field-latency\">100 / 100 / 100</td>" in html and "<td class=\"field-first_byte\">40 / 40</td>" in html
    assert "<td class=\"field-first_byte\">—</td>" in html  # bob's request had no first byte
    assert "?provider=azure" in html  # a filter by provider
    summary = {(row["model"], row["provider"]): row for row in page.context["by_model_provider"]}
    assert set(summary) == {("gpt-4o", "openai"), ("gpt-4o", "azure")}
    assert (summary[("gpt-4o", "azure")]["requests"], summary[("gpt-4o", "azure")]["cost"]) == (2, "$2.00")
    assert 'id="rollup-by-model-provider"' in html
    azure = admin_client.get("/admin/billing/usagerollup/", {"provider": "azure"})
    assert azure.context["cl"].result_count == 2 and azure.context["totals"]["requests"] == 2
    assert [r["provider"] for r in azure.context["by_model_provider"]] == ["azure"]


def export_rows(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200 and response.streaming and response["Content-Type"] == "text/csv; charset=utf-8"
    reader = csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode()))
    return list(reader)


def test_the_rollups_export_holds_what_the_filters_select(admin_client: Client, alice: Party, bob: Party) -> None:
    day = datetime(2026, 11, 20, 10, tzinfo=UTC)
    served(alice, day, model="gpt-4o", provider="openai", picos=1, latency=100, ttfb=40)
    served(alice, day + timedelta(hours=1), model="=HYPERLINK(1)", provider="@evil", picos=10**12 + 1, latency=300,
           ttfb=90)
    served(bob, day, model="gpt-4o", provider="azure", picos=5, latency=200, ttfb=None)
    rollups.roll_up()
    page = admin_client.get("/admin/billing/usagerollup/", {"provider": "openai"}).content.decode()
    assert 'href="/admin/billing/usagerollup/export/?provider=openai"' in page  # the button keeps the filters

    days = export_rows(admin_client.get("/admin/billing/usagerollup/export/"))
    assert len(days) == 3 and {r["granularity"] for r in days} == {"day"}
    assert sorted(r["cost_usd"] for r in days) == ["0.000000000001", "0.000000000005", "1.000000000001"]
    mine = export_rows(admin_client.get("/admin/billing/usagerollup/export/",
                                        {"granularity": "hour", "tenant__id__exact": alice.tenant.pk}))
    assert [(r["bucket"], r["tenant"]) for r in mine] == [("2026-11-20T11:00:00+00:00", "alice"),
                                                          ("2026-11-20T10:00:00+00:00", "alice")]
    assert (mine[0]["model"], mine[0]["provider"]) == ("'=HYPERLINK(1)", "'@evil")  # text, not a formula
    assert (mine[1]["latency_p99_ms"], mine[1]["ttfb_p50_ms"], mine[1]["ttfb_p95_ms"]) == ("100", "40", "40")
    azure = export_rows(admin_client.get("/admin/billing/usagerollup/export/", {"provider": "azure"}))
    assert [(r["tenant"], r["ttfb_p50_ms"]) for r in azure] == [("bob", "")]
    assert admin_client.get("/admin/billing/usagerollup/export/", {"bogus__field": "1"}).status_code == 400
    assert admin_client.get("/admin/billing/usagerollup/export/", {"tenant__id__exact": "x"}).status_code == 400


def test_only_operators_export_rollups(client: Client, alice: Party) -> None:
    client.force_login(alice.user)  # a tenant's owner, not staff
    response = client.get("/admin/billing/usagerollup/export/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
