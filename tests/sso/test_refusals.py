"""Single sign-on refuses cleanly: bad state, nonce or token, an unverified email, an unreachable provider."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.factories import make_tenant

from .conftest import CLIENT_SECRET, Provider, sso_settings


def callback_url(sso: Provider, client: Client, sub: str, **claims: object) -> str:
    """Run the flow up to the provider's redirect back to us; returns the callback URL, not yet visited."""
    sso.set_user(sub, **claims)
    start = client.get("/oidc/authenticate/")
    back = urlsplit(sso.authorize(start["Location"], sub))
    return f"{back.path}?{back.query}"


def assert_refused(client: Client, url: str) -> None:
    r = client.get(url, follow=True)
    assert r.status_code == 200 and r.redirect_chain[-1][0] == "/login/"
    assert b"Single sign-on did not complete" in r.content
    assert not r.wsgi_request.user.is_authenticated


def test_a_callback_with_a_state_this_session_never_sent_is_refused(sso: Provider, client: Client) -> None:
    url = callback_url(sso, client, "ann-r1", email="ann@example.com")
    code = parse_qs(urlsplit(url).query)["code"][0]
    assert_refused(client, f"/oidc/callback/?code={code}&state=forged")
    assert_refused(Client(), url)  # another browser: no state in its session
    assert not User.objects.exists()


def test_a_callback_is_used_once(sso: Provider, client: Client) -> None:
    url = callback_url(sso, client, "ann-r2", email="ann@example.com")
    assert client.get(url).status_code == 302
    client.logout()
    assert_refused(client, url)


def test_an_id_token_with_another_nonce_is_refused(sso: Provider, client: Client) -> None:
    url = callback_url(sso, client, "ann-r3", email="ann@example.com")
    session = client.session
    state = parse_qs(urlsplit(url).query)["state"][0]
    session["oidc_states"][state]["nonce"] = "not-the-one-sent"
    session.save()
    assert_refused(client, url)
    assert not User.objects.exists()


def test_a_code_for_another_client_is_refused(sso: Provider, client: Client) -> None:
    url = callback_url(sso, client, "ann-r4", email="ann@example.com")
    with sso_settings(sso.issuer, TOLLGATE_OIDC_CLIENT_ID="someone-else"):
        assert_refused(client, url)
    assert not User.objects.exists()


def test_an_email_the_provider_has_not_verified_is_refused(sso: Provider, client: Client) -> None:
    assert_refused(client, callback_url(sso, client, "ann-r5", email="ann@example.com", email_verified=False))
    assert_refused(client, callback_url(sso, client, "ann-r6", name="No Email"))
    assert not User.objects.exists()


def test_an_error_from_the_provider_is_refused(sso: Provider, client: Client) -> None:
    client.get("/oidc/authenticate/")
    assert_refused(client, "/oidc/callback/?error=access_denied&state=whatever")


def test_an_unreachable_provider_is_a_503_page(db: None, client: Client) -> None:
    with sso_settings("http://127.0.0.1:9"):
        r = client.get("/oidc/authenticate/")
    assert r.status_code == 503 and b"cannot reach Example ID" in r.content


def test_the_client_secret_never_reaches_a_page_or_the_logs(
    sso: Provider, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    make_tenant("acme")
    caplog.set_level(logging.DEBUG)
    pages = [client.get("/login/"), client.get("/admin/login/"), client.get("/oidc/authenticate/")]
    pages.append(sso.sign_in(client, "ann-r7", email="ann@example.com", groups=["acme-devs"]))
    other = Client()
    pages += [client.get("/keys/"), other.get(callback_url(sso, other, "ann-r7") + "x", follow=True)]
    assert all(CLIENT_SECRET.encode() not in page.content for page in pages)
    assert all(CLIENT_SECRET not in value for page in pages for value in page.headers.values())
    assert "single sign-on refused" in caplog.text
    assert CLIENT_SECRET not in caplog.text
