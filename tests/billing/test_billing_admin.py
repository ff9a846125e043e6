from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.keys import lookup
from accounts.models import ApiKey, Tenant
from billing import budgets, pricing
from billing.models import Budget, Price, UsageRecord
from proxy.models import Provider

from ..conftest import Party


def usage(party: Party, **fields: Any) -> UsageRecord:
    fields = {"endpoint": "chat", "end_reason": "complete", "status_code": 200, "public_model": "gpt-4o", **fields}
    return UsageRecord.objects.create(tenant=party.tenant, key=party.key, **fields)


def gpt4o(on: date = date(2025, 1, 1), **fields: Any) -> Price:
    fields = {"input_per_million": Decimal("2.50"), "output_per_million": Decimal("10.00"), **fields}
    return Price.objects.create(model="gpt-4o", effective_from=on, **fields)


@pytest.fixture
def fixed_status(monkeypatch: pytest.MonkeyPatch) -> None:
    def status(budget: Budget, *, now: Any = None) -> budgets.BudgetStatus:
        return budgets.BudgetStatus(starts_at=timezone.now(), spent_micros=1_250_000, reserved_micros=250_000,
                                    limit_micros=budget.amount_micros)

    monkeypatch.setattr(budgets, "status", status)


def test_price_pages_load_and_show_the_models_other_prices(admin_client: Client, db: None) -> None:
    openai = Provider.objects.create(name="openai", kind="openai_compatible", preset="openai")
    first, later = gpt4o(date(2025, 1, 1)), gpt4o(date(2025, 6, 1), input_per_million=Decimal("2.00"))
    gpt4o(date(2025, 3, 1), provider=openai)  # another provider's price is another history
    Price.objects.create(model="o3", effective_from=date(2025, 2, 1), input_per_million=2, output_per_million=8)

    listing = admin_client.get("/admin/billing/price/")
    assert listing.status_code == 200
    assert [p.effective_from for p in listing.context["cl"].result_list][0] == date(2025, 6, 1)  # newest first
    page = admin_client.get(f"/admin/billing/price/{first.pk}/change/").content.decode()
    assert "from 2025-06-01" in page and "newer" in page and "input 2, output 10" in page
    assert "2025-03-01" not in page and "2025-02-01" not in page
    assert "older" in admin_client.get(f"/admin/billing/price/{later.pk}/change/").content.decode()
    assert admin_client.get("/admin/billing/price/add/").status_code == 200
    assert admin_client.get("/admin/billing/price/", {"provider__id__exact": openai.pk}).status_code == 200


def test_adding_a_price_in_the_admin_prices_requests_at_once(admin_client: Client, db: None) -> None:
    assert pricing.price_for(public_model="o3", provider="", upstream_model="o3", on=date(2026, 1, 1)) is None
    response = admin_client.post("/admin/billing/price/add/", {
        "model": "o3", "effective_from": "2025-01-01", "input_per_million": "2.00", "output_per_million": "8.00",
        "cached_input_per_million": "0.50", "per_request": "0", "note": "our contract",
    })
    assert response.status_code == 302, response.content
    found = pricing.price_for(public_model="o3", provider="", upstream_model="o3", on=date(2026, 1, 1))
    assert found is not None and found.cached_input_per_million == Decimal("0.5")


def test_price_list_warns_about_models_used_without_a_price_this_week(admin_client: Client, alice: Party) -> None:
    usage(alice, public_model="mystery-model", unpriced=True)
    usage(alice, public_model="mystery-model", unpriced=True)
    usage(alice, public_model="old-model", unpriced=True, created_at=timezone.now() - timedelta(days=8))
    usage(alice, public_model="gpt-4o", unpriced=False)
    page = admin_client.get("/admin/billing/price/").content.decode()
    assert page.count("mystery-model") == 1
    assert "old-model" not in page and "No price for gpt-4o" not in page


def test_a_price_usage_was_charged_at_cannot_be_deleted(admin_client: Client, alice: Party) -> None:
    used, unused = gpt4o(date(2025, 1, 1)), gpt4o(date(2025, 6, 1))
    usage(alice, price=used, cost_picos=100 * 10**6)
    confirm = admin_client.get(f"/admin/billing/price/{used.pk}/delete/").content.decode()
    assert "Cannot delete" in confirm and "usage records were charged at it" in confirm
    admin_client.post(f"/admin/billing/price/{used.pk}/delete/", {"post": "yes"})
    bulk = admin_client.post("/admin/billing/price/", {"action": "delete_selected", "_selected_action": [used.pk]})
    assert "Cannot delete" in bulk.content.decode()
    assert Price.objects.filter(pk=used.pk).exists()
    admin_client.post(f"/admin/billing/price/{unused.pk}/delete/", {"post": "yes"})
    assert not Price.objects.filter(pk=unused.pk).exists()


def test_ledger_shows_cost_in_dollars_and_why_a_request_was_admitted(admin_client: Client, alice: Party) -> None:
    gate = {"budgets": [{"name": "monthly", "limit_micros": 5_000_000, "spent_micros": 1_000_000}], "rate": {"admitted": True}}
    priced = usage(alice, cost_picos=1_234_567 * 10**6, price=gpt4o(), gate=gate)
    unpriced = usage(alice, public_model="mystery-model", unpriced=True)

    listing = admin_client.get("/admin/billing/usagerecord/")
    assert listing.status_code == 200 and "$1.234567" in listing.content.decode()
    filtered = admin_client.get("/admin/billing/usagerecord/", {"unpriced__exact": "1"})
    assert [r.pk for r in filtered.context["cl"].result_list] == [unpriced.pk]

    page = admin_client.get(f"/admin/billing/usagerecord/{priced.pk}/change/").content.decode()
    assert "Why admitted or denied" in page
    assert "<pre>{\n  &quot;budgets&quot;: [\n    {\n      &quot;limit_micros&quot;: 5000000," in page
    empty = admin_client.get(f"/admin/billing/usagerecord/{unpriced.pk}/change/").content.decode()
    assert "Nothing was recorded." in empty


def test_budget_pages_show_this_periods_spend(admin_client: Client, alice: Party, fixed_status: None) -> None:
    budget = Budget.objects.create(tenant=alice.tenant, key=alice.key, name="ci", amount=Decimal("10.00"))
    listing = admin_client.get("/admin/billing/budget/").content.decode()
    assert "$1.25 spent / $0.25 reserved / $8.50 left" in listing
    assert admin_client.get(f"/admin/billing/budget/{budget.pk}/change/").status_code == 200
    assert admin_client.get("/admin/billing/budget/add/").status_code == 200


def test_budget_status_column_reads_the_periods_real_totals(admin_client: Client, alice: Party) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("10.00"), period=Budget.Period.MONTH)
    usage(alice, cost_picos=2_500_000 * 10**6)
    listing = admin_client.get("/admin/billing/budget/").content.decode()
    assert "$2.50 spent / $0.00 reserved / $7.50 left" in listing


def test_budget_admin_refuses_a_key_of_another_tenant(admin_client: Client, alice: Party, bob: Party) -> None:
    form = {"tenant": alice.tenant.pk, "key": bob.key.pk, "name": "", "amount": "10", "period": "month",
            "hard": "on", "alert_thresholds": "50,80,100", "is_active": "on"}
    response = admin_client.post("/admin/billing/budget/add/", form)
    assert response.status_code == 200 and "This key belongs to another tenant." in response.content.decode()
    assert not Budget.objects.exists()
    assert admin_client.post("/admin/billing/budget/add/", {**form, "key": alice.key.pk}).status_code == 302
    assert Budget.objects.get().key == alice.key


def tenant_form(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    return {
        "name": tenant.name, "slug": tenant.slug, "timezone": tenant.timezone, "contact_emails": tenant.contact_emails,
        "is_active": "on", "requests_per_minute": "", "tokens_per_minute": "", "max_concurrent": "",
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
        "api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0",
        "budgets-TOTAL_FORMS": "0", "budgets-INITIAL_FORMS": "0", **fields,
    }


def new_budget(index: int, **fields: Any) -> dict[str, Any]:
    values = {"name": "", "amount": "25", "period": "month", "hard": "on", "alert_thresholds": "50,80,100",
              "is_active": "on", **fields}
    return {f"budgets-{index}-{name}": value for name, value in values.items()}


def test_tenant_page_edits_budgets_and_rate_limits(admin_client: Client, alice: Party, bob: Party,
                                                   fixed_status: None) -> None:
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("10.00"), name="monthly")
    page = admin_client.get(f"/admin/accounts/tenant/{alice.tenant.pk}/change/").content.decode()
    assert "$1.25 spent / $0.25 reserved / $8.50 left" in page and "Rate limits" in page
    assert bob.key.prefix not in page  # the budget inline offers only this tenant's keys

    assert lookup(alice.secret).tenant_limits.requests_per_minute is None  # now cached
    refused = admin_client.post(f"/admin/accounts/tenant/{alice.tenant.pk}/change/", tenant_form(
        alice.tenant, **{"budgets-TOTAL_FORMS": "1"}, **new_budget(0, key=bob.key.pk)))
    assert refused.status_code == 200 and Budget.objects.count() == 1
    response = admin_client.post(f"/admin/accounts/tenant/{alice.tenant.pk}/change/", tenant_form(
        alice.tenant, requests_per_minute="60", **{"budgets-TOTAL_FORMS": "1"}, **new_budget(0, key=alice.key.pk, name="ci")))
    assert response.status_code == 302, response.content
    added = Budget.objects.get(name="ci")
    assert (added.tenant, added.key, added.amount) == (alice.tenant, alice.key, Decimal("25.00"))
    assert lookup(alice.secret).tenant_limits.requests_per_minute == 60  # the cached lookup was dropped


def key_form(key: ApiKey, **fields: Any) -> dict[str, Any]:
    return {"name": key.name, "expires_at_0": "", "expires_at_1": "", "allowed_models": "[]",
            "requests_per_minute": "", "tokens_per_minute": "", "max_concurrent": "",
            "budgets-TOTAL_FORMS": "0", "budgets-INITIAL_FORMS": "0", **fields}


def test_key_page_adds_a_budget_of_the_keys_tenant(admin_client: Client, alice: Party, fixed_status: None) -> None:
    Budget.objects.create(tenant=alice.tenant, key=alice.key, amount=Decimal("10.00"))
    page = admin_client.get(f"/admin/accounts/apikey/{alice.key.pk}/change/").content.decode()
    assert "$1.25 spent / $0.25 reserved / $8.50 left" in page and "Rate limits" in page

    assert lookup(alice.secret).key_limits.max_concurrent is None  # now cached
    response = admin_client.post(f"/admin/accounts/apikey/{alice.key.pk}/change/", key_form(
        alice.key, max_concurrent="4", **{"budgets-TOTAL_FORMS": "1"}, **new_budget(0, name="daily", period="day")))
    assert response.status_code == 302, response.content
    daily = Budget.objects.get(name="daily")
    assert (daily.tenant, daily.key, daily.period) == (alice.tenant, alice.key, "day")
    assert lookup(alice.secret).key_limits.max_concurrent == 4


def test_issuing_a_key_keeps_its_rate_limits(admin_client: Client, alice: Party) -> None:
    add_page = admin_client.get("/admin/accounts/apikey/add/").content.decode()
    assert "budgets-TOTAL_FORMS" not in add_page  # budgets go on a key once it is issued
    response = admin_client.post("/admin/accounts/apikey/add/", {
        "tenant": alice.tenant.pk, "name": "batch", "allowed_models": "[]", "expires_at_0": "", "expires_at_1": "",
        "tokens_per_minute": "10000",
    })
    assert response.status_code == 302, response.content
    key = ApiKey.objects.get(name="batch")
    assert (key.tokens_per_minute, key.requests_per_minute) == (10_000, None)


def test_budgets_added_in_the_admin_take_micro_dollars_and_are_the_operators(admin_client: Client, alice: Party) -> None:
    form = {"tenant": alice.tenant.pk, "name": "tiny", "amount": "0.000150", "period": "day", "hard": "on",
            "alert_thresholds": "50", "is_active": "on", "set_by": "tenant"}
    assert admin_client.post("/admin/billing/budget/add/", form).status_code == 302
    budget = Budget.objects.get(name="tiny")
    assert (budget.amount_micros, budget.set_by) == (150, "operator")  # set_by is read-only here
    too_fine = admin_client.post("/admin/billing/budget/add/", {**form, "name": "finer", "amount": "0.0000001"})
    assert too_fine.status_code == 200 and not Budget.objects.filter(name="finer").exists()
    listing = admin_client.get("/admin/billing/budget/?set_by__exact=operator").content.decode()
    assert "tiny" in listing and "$0.00015" in listing


def message_request(user: Any) -> Any:
    from django.contrib.messages.storage.cookie import CookieStorage
    from django.test import RequestFactory

    request = RequestFactory().post("/admin/accounts/tenant/")
    request.user = user
    request._messages = CookieStorage(request)
    return request


def test_the_send_a_test_alert_action_reports_where_it_went(alice: Party, bob: Party, admin_user: Any) -> None:
    from django.contrib import admin
    from django.core import mail

    from billing.admin import send_test_alert

    Tenant.objects.filter(pk=bob.tenant.pk).update(contact_emails="")
    request = message_request(admin_user)
    send_test_alert(admin.site._registry[Tenant], request, Tenant.objects.filter(pk__in=[alice.tenant.pk, bob.tenant.pk]))
    [email] = mail.outbox
    assert email.to == ["alice@example.com"] and "TEST" in email.subject
    alice_said, bob_said = (str(m) for m in request._messages)
    assert "Test alert for Alice: emailed to alice@example.com via the in-memory outbox" in alice_said
    assert "no webhook is set" in alice_said
    assert "Test alert for Bob: no email: the tenant has no contact emails" in bob_said


def test_the_test_alert_action_takes_a_handful_of_tenants_at_a_time(admin_user: Any, db: None) -> None:
    from django.contrib import admin
    from django.core import mail

    from accounts import services
    from billing.admin import TEST_ALERTS_AT_ONCE, send_test_alert

    for i in range(TEST_ALERTS_AT_ONCE + 1):
        services.create_tenant(name=f"T{i}", slug=f"t{i}", contact_emails=[f"t{i}@example.com"])
    request = message_request(admin_user)
    send_test_alert(admin.site._registry[Tenant], request, Tenant.objects.all())
    assert mail.outbox == [] and "at most 20" in str(next(iter(request._messages)))
