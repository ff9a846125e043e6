"""The Content-Security-Policy in a real browser: chromium visits the tenant pages, the admin and the API's pages,
uses the playground (fetch) and the live page (WebSocket), and reports no violation."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.urls import NoReverseMatch, reverse
from django_celery_beat.models import CrontabSchedule
from playwright.sync_api import expect

from accounts.models import ApiKey, Tenant
from billing.models import Budget
from proxy.services import ensure_demo_route

from ..conftest import make_party
from .test_browser import PASSWORD, chromium, sign_in, site  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

# Installed before any page script: every violation the page reports, as "directive blocked-uri source:line".
LISTEN = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


def until(page: Any, expression: str, timeout: float = 5.0) -> None:
    """Wait for a page expression to be true. (page.wait_for_function compiles it with eval, which the policy refuses.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
        page.wait_for_timeout(50)


class Watched:
    """A signed-in page whose CSP violations (events and console messages) are collected per visit."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console: list[str] = []
        page.context.add_init_script(LISTEN)
        page.on("console", lambda message: self.console.append(message.text)
                if "Content Security Policy" in message.text else None)

    def visit(self, url: str) -> list[str]:
        response = self.page.goto(url)
        assert response is not None and "script-src 'self'" in (response.header_value("content-security-policy") or ""), url
        self.page.wait_for_load_state("networkidle")
        return self.violations()

    def violations(self) -> list[str]:
        found = [*self.page.evaluate("window.__violations"), *self.console]
        self.page.evaluate("window.__violations = []")
        self.console.clear()
        return found


def admin_urls(tenant: Tenant, key: ApiKey, budget: Budget) -> list[str]:
    """Every registered model's list and add page, and the change pages of a tenant, a key and a budget."""
    urls = [reverse("admin:index")]
    for model in admin.site._registry:
        for view in ("changelist", "add"):
            try:
                urls.append(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}"))
            except NoReverseMatch:
                pass
    for obj in (tenant, key, budget):
        urls.append(reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk]))
    return urls


def test_the_pages_and_the_admin_report_no_csp_violation(chromium: Any, site: str) -> None:  # noqa: F811
    alice = make_party("alice")
    alice.user.set_password(PASSWORD)
    alice.user.save()
    User.objects.create_superuser("ops", password=PASSWORD)
    ensure_demo_route()
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10.00"), period="month", name="Team budget")

    # Signed out.
    anonymous = Watched(chromium.new_context().new_page())
    for path in ("/login/", "/password/reset/", "/admin/login/"):
        assert anonymous.visit(f"{site}{path}") == [], path

    # The probe works: a script injected inline is blocked and reported.
    anonymous.page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
                            " document.head.appendChild(s); }")
    until(anonymous.page, "window.__violations.length > 0")
    assert any("script-src" in v for v in anonymous.violations())
    assert anonymous.page.evaluate("window.ran") is None

    # A tenant owner's pages.
    owner = Watched(sign_in(chromium, site, "alice"))
    for path in ("/", "/keys/", "/budgets/", "/requests/", "/password/", f"/budgets/{budget.pk}/thresholds/",
                 "/projects/", "/members/", "/activity/"):
        assert owner.visit(f"{site}{path}") == [], path
    assert owner.visit(f"{site}/live/") == []
    owner.page.get_by_text("Connected.").wait_for()  # the WebSocket is allowed by connect-src 'self'
    assert owner.violations() == []
    assert owner.visit(f"{site}/playground/") == []
    owner.page.get_by_label("Model").select_option("demo")
    owner.page.get_by_label("Message").fill("Hi there")
    owner.page.get_by_role("button", name="Send").click()
    expect(owner.page.locator(".msg.assistant").first).to_contain_text("Hi there", timeout=15_000)  # fetch, streamed
    expect(owner.page.locator("#status")).to_have_text("")
    assert owner.violations() == []

    # The operator's admin, and the management API's pages.
    operator = Watched(sign_in(chromium, site, "ops"))
    for url in admin_urls(alice.tenant, alice.key, budget):
        assert operator.visit(f"{site}{url}") == [], url
    # django-celery-beat's inline script, moved to static/tollgate/periodic_task.js, still does its job.
    CrontabSchedule.objects.create(minute="17", hour="3")
    operator.visit(f"{site}{reverse('admin:django_celery_beat_periodictask_add')}")
    expect(operator.page.locator(".field-crontab_translation")).to_be_hidden()
    operator.page.locator("#id_crontab").select_option(index=1)
    expect(operator.page.locator(".field-crontab .help")).to_contain_text("Translation: ")
    assert operator.violations() == []
    for path in ("/api/", "/api/tenants/"):
        assert operator.visit(f"{site}{path}") == [], path


def test_the_api_docs_page_reports_no_csp_violation(chromium: Any, site: str) -> None:  # noqa: F811
    User.objects.create_superuser("ops", password=PASSWORD)
    operator = Watched(sign_in(chromium, site, "ops"))
    assert operator.visit(f"{site}/api/docs/") == []
    expect(operator.page.locator("#swagger-ui")).to_contain_text("Tollgate management API")  # Swagger UI ran
    assert operator.violations() == []
