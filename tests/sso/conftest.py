"""A local OpenID provider (oidc-provider-mock) on 127.0.0.1, and the settings that point Tollgate at it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import oidc_provider_mock
import pytest
from django.test import Client
from django.test.utils import override_settings
from werkzeug.serving import make_server

CLIENT_ID = "tollgate-test"
CLIENT_SECRET = "sso-client-secret-never-shown"
MAPPING = {
    "acme-admins": (("acme", "owner"),),
    "acme-devs": (("acme", "member"),),
    "globex-devs": (("globex", "member"),),
}


@dataclass
class Provider:
    """The running provider: its issuer URL, and a way to sign a user in through it with chosen claims."""

    issuer: str

    def set_user(self, sub: str, **claims: Any) -> None:
        httpx.put(f"{self.issuer}/users/{sub}", json=claims).raise_for_status()

    def authorize(self, authorize_url: str, sub: str) -> str:
        """Submit the provider's sign-in form as ``sub``; returns where it sends the browser (our callback)."""
        response = httpx.post(authorize_url, data={"sub": sub})
        assert response.status_code == 302, response.text
        return str(response.headers["location"])

    def sign_in(self, client: Client, sub: str, *, next_url: str = "", **claims: Any) -> Any:
        """The whole code flow: Tollgate → provider → Tollgate's callback. Returns the callback's response."""
        self.set_user(sub, **claims)
        start = client.get("/oidc/authenticate/" + (f"?next={next_url}" if next_url else ""))
        assert start.status_code == 302 and start["Location"].startswith(self.issuer), start
        back = urlsplit(self.authorize(start["Location"], sub))
        return client.get(f"{back.path}?{back.query}")


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[Provider]:
    server = make_server("127.0.0.1", 0, oidc_provider_mock.app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Provider(issuer=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join(2)
        server.server_close()


def sso_settings(issuer: str, **overrides: Any) -> override_settings:
    values: dict[str, Any] = {
        "TOLLGATE_OIDC_ISSUER": issuer,
        "TOLLGATE_OIDC_CLIENT_ID": CLIENT_ID,
        "TOLLGATE_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "TOLLGATE_OIDC_PROVIDER_NAME": "Example ID",
        "TOLLGATE_OIDC_STAFF_GROUPS": ["ops"],
        "TOLLGATE_OIDC_SUPERUSER_GROUPS": ["root"],
        "TOLLGATE_OIDC_TENANT_GROUPS": MAPPING,
        "AUTHENTICATION_BACKENDS": ["accounts.sso.Backend", "django.contrib.auth.backends.ModelBackend"],
    }
    values.update(overrides)
    return override_settings(**values)


@pytest.fixture
def sso(oidc_provider: Provider, db: None) -> Iterator[Provider]:
    """Single sign-on on, against the local provider (discovery is fetched afresh for each test)."""
    with sso_settings(oidc_provider.issuer):
        yield oidc_provider
