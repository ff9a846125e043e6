"""Single sign-on in a real server process, configured from the environment only, with password sign-in off."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from django.contrib.auth.models import User
from django.db import connection

from accounts.models import Membership
from tests.factories import make_tenant

from ..live import tollgate_server
from .conftest import CLIENT_ID, CLIENT_SECRET, Provider

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see the rows


def test_sso_from_the_environment_signs_in_with_passwords_off(oidc_provider: Provider, tmp_path: Path) -> None:
    make_tenant("acme")
    oidc_provider.set_user("live-1", email="live@example.com", groups=["acme-devs"])
    env = {"TOLLGATE_OIDC_ISSUER": oidc_provider.issuer + "/", "TOLLGATE_OIDC_CLIENT_ID": CLIENT_ID,
           "TOLLGATE_OIDC_CLIENT_SECRET": CLIENT_SECRET, "TOLLGATE_OIDC_PROVIDER_NAME": "Example ID",
           "TOLLGATE_OIDC_TENANT_GROUPS": "acme-devs=acme:member", "TOLLGATE_PASSWORD_LOGIN": "off",
           "TOLLGATE_LOG_LEVEL": "DEBUG"}
    log = tmp_path / "server.log"
    with tollgate_server(connection.settings_dict["NAME"], log, **env) as url, httpx.Client(base_url=url) as browser:
        page = browser.get("/login/?next=/keys/")
        assert "Sign in with Example ID" in page.text and 'name="password"' not in page.text
        assert browser.post("/login/", data={"username": "x", "password": "y"}).status_code == 403
        start = browser.get("/oidc/authenticate/?next=/keys/")
        assert start.status_code == 302 and start.headers["location"].startswith(oidc_provider.issuer)
        back = oidc_provider.authorize(start.headers["location"], "live-1")
        assert back.startswith(f"{url}/oidc/callback/?")
        done = browser.get(back)
        assert done.status_code == 302 and done.headers["location"] == "/keys/"
        assert browser.get("/keys/").status_code == 200
    user = User.objects.get(email="live@example.com")
    assert list(Membership.objects.filter(user=user).values_list("tenant__slug", "role")) == [("acme", "member")]
    text = log.read_text()
    assert "/oauth2/token" in text and CLIENT_SECRET not in text  # debug logs of the whole flow, no secret
