"""Single sign-on settings: off without an issuer, password sign-in off, discovery, and the parsing of the mapping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.test.utils import override_settings

from accounts import sso as single_sign_on
from accounts import sso_config
from tests.factories import make_user

from .conftest import Provider, sso_settings


def test_without_an_issuer_there_is_no_button_and_no_sso_endpoint(db: None, client: Client) -> None:
    with override_settings(TOLLGATE_OIDC_ISSUER=""):
        assert b"Sign in with" not in client.get("/login/").content
        assert b"Sign in with" not in client.get("/admin/login/").content
        assert client.get("/oidc/authenticate/").status_code == 404
        assert client.get("/oidc/callback/?code=x&state=y").status_code == 404
        make_user("ann")
        assert client.post("/login/", {"username": "ann", "password": "pw-ann"}).status_code == 302


def test_with_an_issuer_both_sign_in_pages_offer_the_provider(sso: Provider, client: Client) -> None:
    page = client.get("/login/?next=/keys/")
    assert b"Sign in with Example ID" in page.content and b'href="/oidc/authenticate/?next=/keys/"' in page.content
    assert b'name="password"' in page.content
    admin = client.get("/admin/login/?next=/admin/")
    assert b"Sign in with Example ID" in admin.content and b'name="password"' in admin.content
    assert b"/oidc/authenticate/?next=/admin/" in admin.content


def test_password_sign_in_off_leaves_only_the_provider(sso: Provider, client: Client) -> None:
    make_user("ann", email="ann@example.com", is_staff=True, is_superuser=True)
    with override_settings(TOLLGATE_PASSWORD_LOGIN=False, AUTHENTICATION_BACKENDS=["accounts.sso.Backend"]):
        for path in ("/login/", "/admin/login/"):
            page = client.get(path)
            assert b"Sign in with Example ID" in page.content and b'name="password"' not in page.content
            refused = client.post(path, {"username": "ann", "password": "pw-ann"})
            assert refused.status_code == 403 and b"Password sign-in is turned off" in refused.content
            assert not refused.wsgi_request.user.is_authenticated
        reset = client.post("/password/reset/", {"email": "ann@example.com"})
        assert reset.status_code == 403 and b"Password sign-in is turned off" in reset.content
        assert sso.sign_in(client, "ann-s1", email="ann@example.com", groups=["root"]).status_code == 302
        assert client.get("/admin/").status_code == 200  # matched by email: the superuser, through the provider


def test_discovery_is_fetched_on_first_use_and_kept(sso: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[str] = []
    real = single_sign_on._fetch_discovery
    monkeypatch.setattr(single_sign_on, "_fetch_discovery", lambda issuer: fetched.append(issuer) or real(issuer))
    assert Client().get("/login/").status_code == 200 and fetched == []  # the sign-in page needs no discovery
    sso.sign_in(Client(), "ann-s2", email="ann@example.com")
    sso.sign_in(Client(), "ann-s2", email="ann@example.com")
    assert fetched == [sso.issuer]


def test_a_discovery_document_of_another_issuer_is_a_configuration_error(
    db: None, monkeypatch: pytest.MonkeyPatch, client: Client
) -> None:
    endpoints = {name: "https://elsewhere.example/x" for name in single_sign_on.ENDPOINTS}
    document = {"issuer": "https://elsewhere.example", **endpoints}
    monkeypatch.setattr(single_sign_on.httpx, "get", lambda url, **kwargs: httpx.Response(
        200, json=document, request=httpx.Request("GET", url)))
    with sso_settings("https://id.example.com"):
        with pytest.raises(ImproperlyConfigured, match="names 'https://elsewhere.example'"):
            single_sign_on.discovery()
        assert client.get("/oidc/authenticate/").status_code == 503  # a page, not a 500
        del document["issuer"], document["jwks_uri"]
        document["issuer"] = "https://id.example.com/"
        with pytest.raises(ImproperlyConfigured, match="lacks jwks_uri"):
            single_sign_on.discovery()


@pytest.mark.parametrize("value, grants", [
    ("", {}),
    ("acme-admins=acme:owner, acme-devs=acme:member,ops=acme:member,ops=globex:owner",
     {"acme-admins": (("acme", "owner"),), "acme-devs": (("acme", "member"),),
      "ops": (("acme", "member"), ("globex", "owner"))}),
    ("CN=Admins OU=x=acme:owner", None),
    ("acme-admins=acme:admin", None),
    ("acme-admins=acme", None),
    ("acme-admins=:owner", None),
])
def test_the_tenant_group_mapping(
    monkeypatch: pytest.MonkeyPatch, value: str, grants: dict[str, object] | None
) -> None:
    monkeypatch.setenv("TOLLGATE_OIDC_TENANT_GROUPS", value)
    if grants is None:
        with pytest.raises(ImproperlyConfigured, match="group=tenant-slug:role"):
            sso_config.tenant_grants("TOLLGATE_OIDC_TENANT_GROUPS")
    else:
        assert sso_config.tenant_grants("TOLLGATE_OIDC_TENANT_GROUPS") == grants


def test_bad_values_are_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value, function in [("ISSUER", "id.example.com", sso_config.issuer),
                                  ("ISSUER", "https://id.example.com/?x=1", sso_config.issuer),
                                  ("LOGIN", "maybe", sso_config.password_login)]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ImproperlyConfigured, match=name):
            function(name)
    monkeypatch.setenv("SCOPES", "email profile")
    with pytest.raises(ImproperlyConfigured, match="openid"):
        sso_config.scopes("SCOPES", "openid")
    monkeypatch.setenv("ALGO", "none")
    with pytest.raises(ImproperlyConfigured, match="RS256"):
        sso_config.sign_algorithm("ALGO", "RS256")
    monkeypatch.setenv("ISSUER", "https://id.example.com/")
    assert sso_config.issuer("ISSUER") == "https://id.example.com"


def test_groups_come_from_the_configured_claim(db: None) -> None:
    assert single_sign_on.groups_from({"groups": ["a", "b", 3]}) == {"a", "b"}
    assert single_sign_on.groups_from({"groups": "a"}) == {"a"}
    assert single_sign_on.groups_from({}) == set()
    with override_settings(TOLLGATE_OIDC_GROUPS_CLAIM="realm_access.roles"):
        assert single_sign_on.groups_from({"realm_access": {"roles": ["ops"]}}) == {"ops"}
        assert single_sign_on.groups_from({"realm_access": "ops"}) == set()


@pytest.mark.parametrize("env, message", [
    ({"TOLLGATE_PASSWORD_LOGIN": "off"}, "TOLLGATE_PASSWORD_LOGIN=off needs TOLLGATE_OIDC_ISSUER"),
    ({"TOLLGATE_OIDC_ISSUER": "https://id.example.com"}, "needs TOLLGATE_OIDC_CLIENT_ID"),
    ({"TOLLGATE_OIDC_TENANT_GROUPS": "admins=acme"}, "group=tenant-slug:role"),
])
def test_a_process_with_bad_sso_settings_does_not_start(env: dict[str, str], message: str) -> None:
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test", **env}
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=environment,
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr and message in result.stderr
