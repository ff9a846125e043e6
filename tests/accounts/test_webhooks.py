"""Alert webhooks go only to public addresses: refused when saved (admin form, management API) and when sent,
after resolving the name, and never through a redirect; TOLLGATE_WEBHOOK_ALLOW_PRIVATE lets them go anywhere."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.forms import modelform_factory
from django.test import Client

from accounts import services, webhooks
from accounts.models import Tenant
from billing import alerts
from billing.models import Budget, BudgetAlert

from ..conftest import Party

pytestmark = pytest.mark.django_db

REFUSED_URLS = [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://localhost:9000/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://10.1.2.3/hook", "private"),
    ("http://192.168.0.10/hook", "private"),
    ("http://172.16.5.4/hook", "private"),
    ("http://100.64.0.1/hook", "private"),
    ("http://0.0.0.0:8000/hook", "private"),
    ("http://[fd00::5]/hook", "private"),
]


@dataclass
class Receiver:
    url: str
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[tuple[str, bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1: answers 200 unless told otherwise, and records what it got."""
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state.received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            status, headers = state.answers.pop(0) if state.answers else (200, {})
            self.send_response(status)
            for name, value in {**headers, "Content-Length": "0"}.items():
                self.send_header(name, value)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def pending_alert(tenant: Tenant, url: str) -> int:
    """An alert ready to post, with the tenant's webhook set as it is stored (checks at save time bypassed)."""
    Tenant.objects.filter(pk=tenant.pk).update(alert_webhook_url=url)
    budget = Budget.objects.create(tenant=tenant, amount=Decimal("1.00"), period="day")
    alert = BudgetAlert.objects.create(budget=budget, period_start=datetime(2026, 11, 28, tzinfo=UTC), threshold=50,
                                       spent_micros=500_000, limit_micros=1_000_000)
    return alert.pk


def resolving(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Patch the resolver: each name resolves to the given addresses. Returns the names looked up."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[webhooks.IPAddress]:
        asked.append(host)
        return [ipaddress.ip_address(a) for a in answers[host]]

    monkeypatch.setattr(webhooks, "resolve", resolve)
    return asked


@pytest.mark.filterwarnings("ignore:The default scheme will be changed")  # Django 6 notice from the form field
@pytest.mark.parametrize("url, kind", REFUSED_URLS)
def test_saving_a_webhook_to_a_private_loopback_or_link_local_address_is_refused(alice: Party, url: str, kind: str) -> None:
    alice.tenant.alert_webhook_url = url
    with pytest.raises(ValidationError) as refused:
        alice.tenant.full_clean()
    [message] = refused.value.message_dict["alert_webhook_url"]
    assert kind in message and "TOLLGATE_WEBHOOK_ALLOW_PRIVATE" in message
    form = modelform_factory(Tenant, fields=["name", "slug", "timezone", "alert_webhook_url"])(
        data={"name": "Alice", "slug": "alice", "timezone": "UTC", "alert_webhook_url": url}, instance=alice.tenant)
    assert not form.is_valid() and kind in str(form.errors["alert_webhook_url"])  # the admin's tenant form


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[::1]:9000/", "http://10.0.0.1/"])
def test_the_management_api_refuses_a_private_webhook_with_a_400(alice: Party, url: str) -> None:
    _, token = services.issue_management_token(user=User.objects.create_user("ops", is_staff=True), name="test")
    api = {"Authorization": f"Bearer {token}"}
    r = Client(headers=api).patch("/api/tenants/alice/", {"alert_webhook_url": url}, content_type="application/json")
    assert r.status_code == 400 and "alert_webhook_url" in r.content.decode()
    assert Tenant.objects.get(pk=alice.tenant.pk).alert_webhook_url == ""
    ok = Client(headers=api).patch("/api/tenants/alice/", {"alert_webhook_url": "https://hooks.example.com/tollgate"},
                                   content_type="application/json")
    assert ok.status_code == 200 and Tenant.objects.get(pk=alice.tenant.pk).alert_webhook_url.startswith("https://hooks")


@pytest.mark.parametrize("url", ["https://hooks.example.com/tollgate", "http://93.184.216.34/hook",
                                 "https://[2606:4700:4700::1111]/hook", "https://localhost.example.com/hook"])
def test_a_public_webhook_is_saved(alice: Party, url: str) -> None:
    alice.tenant.alert_webhook_url = url
    alice.tenant.full_clean()


def test_only_http_and_https_webhooks(alice: Party) -> None:
    alice.tenant.alert_webhook_url = "ftp://files.example.com/hook"
    with pytest.raises(ValidationError, match="http:// or https://"):
        alice.tenant.full_clean()


@pytest.mark.parametrize(
    "address, reason",
    [("8.8.8.8", None), ("2606:4700:4700::1111", None), ("127.0.0.53", "a loopback address"),
     ("169.254.169.254", "a link-local address"), ("::ffff:169.254.169.254", "a link-local address"),
     ("64:ff9b::7f00:1", "a loopback address"), ("64:ff9b::a00:1", "a private address"), ("224.0.0.1", "a multicast address"),
     ("ff02::1", "a multicast address"), ("255.255.255.255", "a private address"), ("::", "a private address")],
)
def test_what_counts_as_public(address: str, reason: str | None) -> None:
    assert webhooks.refusal(ipaddress.ip_address(address)) == reason


def test_sending_is_refused_when_the_name_resolves_to_a_private_address(
    alice: Party, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    alert_id = pending_alert(alice.tenant, f"http://hooks.example.com:{port}/tollgate")
    asked = resolving(monkeypatch, {"hooks.example.com": ["127.0.0.1"]})  # the receiver's address: reachable
    with pytest.raises(alerts.WebhookFailed) as failed:
        alerts.post_webhook(alert_id)
    assert "resolves to 127.0.0.1, a loopback address" in str(failed.value) and "hooks.example.com" not in str(failed.value)
    assert asked == ["hooks.example.com"] and receiver.received == []
    assert BudgetAlert.objects.get(pk=alert_id).webhook_sent_at is None  # given back: the task retries


def test_one_private_answer_among_public_ones_refuses_the_name(alice: Party, monkeypatch: pytest.MonkeyPatch) -> None:
    alert_id = pending_alert(alice.tenant, "https://hooks.example.com/tollgate")
    resolving(monkeypatch, {"hooks.example.com": ["93.184.216.34", "169.254.169.254"]})
    with pytest.raises(alerts.WebhookFailed, match="169.254.169.254, a link-local address"):
        alerts.post_webhook(alert_id)


def test_the_connection_goes_to_the_address_that_was_checked(
    alice: Party, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    # receiver.example exists nowhere: the request reaches the receiver only through the checked address, so the
    # connection cannot have asked DNS again (and got another answer). 127.0.0.1 stands in for a public address.
    port = receiver.url.rsplit(":", 1)[1]
    alert_id = pending_alert(alice.tenant, f"http://receiver.example:{port}/tollgate")
    asked = resolving(monkeypatch, {"receiver.example": ["127.0.0.1"]})
    monkeypatch.setattr(webhooks, "refusal", lambda address: None)
    assert alerts.post_webhook(alert_id) is True
    assert asked == ["receiver.example"] and [path for path, _ in receiver.received] == ["/tollgate"]


@pytest.mark.parametrize("url, kind", REFUSED_URLS[:6])
def test_a_private_address_stored_before_the_check_is_refused_when_sending(alice: Party, url: str, kind: str) -> None:
    alert_id = pending_alert(alice.tenant, url)
    sent: list[httpx.Request] = []
    client = httpx.Client(transport=httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200)))
    with pytest.raises(alerts.WebhookFailed, match="TOLLGATE_WEBHOOK_ALLOW_PRIVATE") as failed:
        alerts.post_webhook(alert_id, client=client)
    assert kind in str(failed.value) and sent == []


def test_a_redirect_to_a_private_address_is_not_followed(alice: Party) -> None:
    alert_id = pending_alert(alice.tenant, "https://hooks.example.com/tollgate")
    sent: list[httpx.Request] = []

    def redirect(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(307, headers={"Location": "http://169.254.169.254/latest/meta-data/"})

    # Even a client that follows redirects by default does not follow this one.
    client = httpx.Client(transport=httpx.MockTransport(redirect), follow_redirects=True)
    with pytest.raises(alerts.WebhookFailed, match="307, a redirect, which is not followed"):
        alerts.post_webhook(alert_id, client=client)
    assert [str(r.url) for r in sent] == ["https://hooks.example.com/tollgate"]
    assert BudgetAlert.objects.get(pk=alert_id).webhook_sent_at is None


def test_the_guarded_client_does_not_follow_a_redirect_either(
    alice: Party, settings: Any, receiver: Receiver
) -> None:
    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = True
    receiver.answers.append((308, {"Location": f"{receiver.url}/elsewhere"}))
    alert_id = pending_alert(alice.tenant, f"{receiver.url}/tollgate")
    with pytest.raises(alerts.WebhookFailed, match="308, a redirect"):
        alerts.post_webhook(alert_id)
    assert [path for path, _ in receiver.received] == ["/tollgate"]


def test_private_targets_are_allowed_when_the_setting_is_on(
    alice: Party, settings: Any, receiver: Receiver
) -> None:
    settings.TOLLGATE_WEBHOOK_ALLOW_PRIVATE = True
    alice.tenant.alert_webhook_url = f"{receiver.url}/tollgate"
    alice.tenant.full_clean()
    alice.tenant.save()
    alert_id = pending_alert(alice.tenant, f"{receiver.url}/tollgate")
    assert alerts.post_webhook(alert_id) is True
    [(path, body)] = receiver.received
    assert path == "/tollgate" and b'"threshold_percent":50' in body
    assert BudgetAlert.objects.get(pk=alert_id).webhook_sent_at is not None


def test_the_same_receiver_is_refused_with_the_setting_off(alice: Party, receiver: Receiver) -> None:
    alert_id = pending_alert(alice.tenant, f"{receiver.url}/tollgate")
    with pytest.raises(alerts.WebhookFailed, match="127.0.0.1 is a loopback address"):
        alerts.post_webhook(alert_id)
    assert receiver.received == []
