"""The tenant pages in a real browser: Debian's chromium driven by Playwright against a live Tollgate process.

Screenshots of each page go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from openai import OpenAI

from accounts.models import Membership
from billing.models import Budget, UsageRecord
from proxy.services import ensure_demo_route

from ..conftest import Party, make_party
from ..factories import make_route, make_user
from ..live import BASE_DIR, tollgate_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = BASE_DIR / "test-artifacts" / "screenshots"
PASSWORD = "a-long-test-password-42"
# Closed network: without these chromium keeps trying to reach Google's services.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        message = "needs Debian's chromium (./tollgate test installs it when run as root)"
        if os.environ.get("TOLLGATE_BROWSER_TESTS") == "required":
            pytest.fail(message)
        pytest.skip(message)
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls stay synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture(scope="module")
def site(django_db_setup: None, mock_upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("site")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test", "TOLLGATE_DATA_DIR": str(data)}
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=BASE_DIR, env=env, check=True)
    with tollgate_server(connection.settings_dict["NAME"], data / "tollgate.log", TOLLGATE_DATA_DIR=str(data),
                         TOLLGATE_DEMO_TOKEN_DELAY_MS="15") as url:
        yield url


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(browser: Any, site: str, username: str) -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{site}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{site}/")
    return page


def test_a_tenant_owner_and_a_member_use_the_pages(chromium: Any, site: str, mock_upstream_url: str) -> None:
    alice: Party = make_party("alice")
    alice.user.set_password(PASSWORD)
    alice.user.save()
    member = make_user("alice-member", tenant=alice.tenant, role=Membership.Role.MEMBER)
    member.set_password(PASSWORD)
    member.save()
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    ensure_demo_route()
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10.00"), period="month", name="Team budget")

    # Sign in.
    login = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
    login.goto(f"{site}/login/")
    shot(login, "01-login")
    page = sign_in(chromium, site, "alice")
    assert page.get_by_role("heading", name="Alice").is_visible()
    shot(page, "02-dashboard")

    # Create a key: its plaintext is shown once.
    page.get_by_role("link", name="Keys").click()
    page.get_by_label("Name").fill("sdk")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").inner_text().strip()
    assert secret.startswith("tg-") and page.get_by_text("shown once").is_visible()
    shot(page, "03-key-created")
    page.goto(f"{site}/keys/")
    assert secret not in page.content() and page.get_by_role("cell", name="sdk", exact=True).is_visible()
    shot(page, "04-keys")

    # The live tail listens while a request is made with the OpenAI SDK.
    live = page.context.new_page()
    live.goto(f"{site}/live/")
    live.get_by_text("Connected.").wait_for()
    completion = OpenAI(base_url=f"{site}/v1", api_key=secret, max_retries=0).chat.completions.with_raw_response.create(
        model="mock", messages=[{"role": "user", "content": "Hello from the browser test"}])
    request_id = completion.headers["x-request-id"]
    row = live.locator("tr[data-request-id]").first
    row.wait_for(timeout=10_000)
    assert "mock" in row.inner_text() and "complete" in row.inner_text()
    shot(live, "05-live")

    # The request log shows it.
    page.goto(f"{site}/requests/")
    assert page.get_by_role("cell", name="mock", exact=True).first.is_visible()
    assert UsageRecord.objects.filter(request_id=request_id).exists()
    shot(page, "06-requests")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    exported = Path(download.value.path()).read_text()
    assert exported.startswith("time,request_id,") and request_id in exported  # as in the x-request-id header

    # The playground streams an answer through the same /v1 path.
    page.goto(f"{site}/playground/")
    page.get_by_label("Model").select_option("demo")
    page.get_by_label("Message").fill("Hi there")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".msg.assistant").first
    from playwright.sync_api import expect  # polls from Python: the pages' policy forbids the eval of wait_for_function

    expect(answer).to_contain_text("Hi there", timeout=15_000)
    expect(page.locator("#status")).to_have_text("")
    assert UsageRecord.objects.filter(tenant=alice.tenant, key__name="Playground: alice", end_reason="complete").exists()
    shot(page, "07-playground")

    # An owner changes an alert threshold.
    page.goto(f"{site}/budgets/")
    page.get_by_label("Alert thresholds of Team budget").fill("30,60")
    page.get_by_role("button", name="Save", exact=True).first.click()
    page.get_by_text("Alert thresholds of Team budget saved").wait_for()
    budget.refresh_from_db()
    assert budget.alert_thresholds == "30,60"
    shot(page, "08-budgets-owner")

    # A member sees the budgets but is refused the change.
    members = sign_in(chromium, site, "alice-member")
    members.goto(f"{site}/budgets/")
    assert members.get_by_text("30,60").is_visible() and members.locator("input[name$=alert_thresholds]").count() == 0
    shot(members, "09-budgets-member")
    members.goto(f"{site}/budgets/{budget.pk}/thresholds/")
    assert members.get_by_text("Only owners can change this").is_visible()
    members.goto(f"{site}/budgets/contacts/")
    assert members.get_by_text("Only owners can change this").is_visible()
    shot(members, "10-owners-only")
    budget.refresh_from_db()
    assert budget.alert_thresholds == "30,60"
