"""The admin at 1400 px in a real browser: no column of a wide change page or changelist is cut off, and the server
log stays quiet (no favicon 404, no streaming warning) while an operator clicks through it.

Screenshots go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from billing.models import Budget, BudgetAlert, UsageRecord, UsageRollup
from proxy.services import ensure_demo_route

from ..conftest import make_party
from ..factories import make_key, make_route, make_user
from ..live import BASE_DIR, tollgate_server
from .test_browser import SHOTS, chromium  # noqa: F401 (chromium is a fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

PASSWORD = "a-long-test-password-42"

# What is cut off: the page wider than the window, or a table or box in the content wider than the box that holds
# it (a box that scrolls sideways shows its last columns only to whoever finds the scrollbar below a long list).
CLIPPED = """() => {
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (typeof el.className === 'string' && el.className.trim() ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
  const found = [];
  const page = document.scrollingElement;
  if (page.scrollWidth > page.clientWidth + 1) found.push(`page is ${page.scrollWidth} px wide in ${page.clientWidth}`);
  for (const el of document.querySelectorAll('#content :not(input, select, textarea)')) {  // fields scroll their text
    const style = getComputedStyle(el);
    if (['auto', 'scroll', 'hidden', 'clip'].includes(style.overflowX) && el.scrollWidth > el.clientWidth + 1)
      found.push(`${describe(el)} holds ${el.scrollWidth} px in ${el.clientWidth}`);
  }
  for (const table of document.querySelectorAll('#content table')) {
    const outer = table.parentElement.getBoundingClientRect();
    const inner = table.getBoundingClientRect();
    if (inner.right > outer.right + 1) found.push(`${describe(table)} ends ${Math.round(inner.right - outer.right)} px past ${describe(table.parentElement)}`);
  }
  return found;
}"""


@pytest.fixture(scope="module")
def site(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("admin-site")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test", "TOLLGATE_DATA_DIR": str(data)}
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=BASE_DIR, env=env, check=True)
    log = data / "tollgate.log"
    with tollgate_server(connection.settings_dict["NAME"], log, TOLLGATE_DATA_DIR=str(data)) as url:
        yield url, log


def busy_tenant() -> tuple[int, int]:
    """A tenant with everything its change page can show: members, keys with model lists, budgets, usage."""
    party = make_party("alice")
    tenant = party.tenant
    tenant.name = "Alice Enterprises International (research and production workloads)"
    tenant.contact_emails = "ops@alice.example, finance-team-distribution-list@alice.example"
    tenant.allowed_models = ["gpt-4o", "demo", "claude-3-5-sonnet-latest"]
    tenant.save()
    for i in range(3):
        make_user(f"alice-engineer-with-a-long-name-{i}", tenant=tenant)
    routes = [make_route(name, upstream_model=f"{name}-2024-08-06", aliases=[f"{name}-alias"])
              for name in ("gpt-4o", "claude-3-5-sonnet-latest")]
    ensure_demo_route()
    for i in range(4):
        make_key(tenant, name=f"batch pipeline number {i} for the nightly evaluation run",
                 allowed_models=["gpt-4o", "claude-3-5-sonnet-latest", "demo"])
    for name, amount in (("Monthly company-wide hard budget", "1000"), ("Weekly soft budget", "250.123456")):
        Budget.objects.create(tenant=tenant, amount=Decimal(amount), period="month", name=name,
                              alert_thresholds="50,80,90,100")
    Budget.objects.create(tenant=tenant, key=party.key, amount=Decimal("5"), period="day", name="Key's daily budget")
    now = timezone.now()
    UsageRollup.objects.bulk_create(
        UsageRollup(granularity="day", bucket=now.replace(hour=0, minute=0, second=0, microsecond=0), tenant=tenant,
                    key=party.key, model=model, requests=1234, errors=5, rejected=6, prompt_tokens=9_876_543,
                    completion_tokens=123_456, cost_picos=12_345_678_900_000, latency_p50_ms=850, latency_p95_ms=4200)
        for model in ("gpt-4o", "claude-3-5-sonnet-latest")
    )
    budget = Budget.objects.filter(tenant=tenant).first()
    BudgetAlert.objects.create(budget=budget, period_start=now, threshold=80, spent_micros=800_000_000,
                               limit_micros=1_000_000_000, email_sent_at=now, webhook_sent_at=now)
    UsageRecord.objects.bulk_create(
        UsageRecord(tenant=tenant, key=party.key, endpoint="chat", public_model="claude-3-5-sonnet-latest",
                    end_reason="upstream_error", status_code=502, prompt_tokens=123_456, completion_tokens=7_890)
        for _ in range(3)
    )
    return tenant.pk, routes[0].pk


def test_wide_admin_pages_clip_nothing_at_1400_px(chromium: Any, site: tuple[str, Path]) -> None:
    url, log = site
    User.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    tenant_id, route_id = busy_tenant()
    page = chromium.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.goto(f"{url}/admin/login/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{url}/admin/")

    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, path in [
        ("tenant-change", f"/admin/accounts/tenant/{tenant_id}/change/"),
        ("tenants", "/admin/accounts/tenant/"),
        ("keys", "/admin/accounts/apikey/"),
        ("budgets", "/admin/billing/budget/"),
        ("ledger", "/admin/billing/usagerecord/"),
        ("rollups", "/admin/billing/usagerollup/"),
        ("alerts", "/admin/billing/budgetalert/"),
        ("prices", "/admin/billing/price/"),
        ("providers", "/admin/proxy/provider/"),
        ("routes", "/admin/proxy/modelroute/"),
        ("route-change", f"/admin/proxy/modelroute/{route_id}/change/"),
    ]:
        page.goto(f"{url}{path}")
        page.screenshot(path=str(SHOTS / f"admin-1400-{name}.png"), full_page=True)
        assert page.evaluate(CLIPPED) == [], path

    page.goto(f"{url}/admin/billing/usagerollup/")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    assert "claude-3-5-sonnet-latest" in Path(download.value.path()).read_text()

    text = log.read_text(errors="replace")
    assert "favicon" not in text and "StreamingHttpResponse" not in text
