"""Behind a load balancer: X-Forwarded-For and X-Forwarded-Proto count only from TOLLGATE_TRUSTED_PROXIES.

A real uvicorn process (tests/live.py passes the setting on as --forwarded-allow-ips, as ./tollgate, the Dockerfile
and docker-compose.yml do). The test client connects from 127.0.0.1, so it is the proxy when 127.0.0.1 is trusted.
"""

from __future__ import annotations

import email
import re
from pathlib import Path

import httpx
import pytest
import yaml
from django.db import connection

from gateway_site.settings import BASE_DIR

from ..conftest import Party
from ..live import tollgate_server

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see the rows

ADDRESS_ACCOUNT_LIMIT = 5  # failed sign-ins a minute per address and account (gateway_site/views.py)


def sign_in_attempt(http: httpx.Client, url: str, forwarded_for: str) -> int:
    page = http.get(f"{url}/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    answer = http.post(f"{url}/login/", data={"csrfmiddlewaretoken": token, "username": "alice", "password": "wrong"},
                       headers={"X-Forwarded-For": forwarded_for})
    return answer.status_code


def statuses_from_two_addresses(url: str) -> tuple[list[int], int]:
    """Fail to sign in as alice past the limit from one forwarded address, then once from another."""
    with httpx.Client(timeout=10) as http:
        first = [sign_in_attempt(http, url, "203.0.113.7") for _ in range(ADDRESS_ACCOUNT_LIMIT + 1)]
        if 429 not in first:
            # The limit's one-minute window (django-ratelimit staggers it per key) ended during the burst, which
            # then counted in two windows: send it again, wholly inside the next one.
            first = [sign_in_attempt(http, url, "203.0.113.7") for _ in range(ADDRESS_ACCOUNT_LIMIT + 1)]
        return first, sign_in_attempt(http, url, "198.51.100.9")


def test_the_sign_in_throttle_counts_the_forwarded_address_of_a_trusted_proxy(alice: Party, tmp_path: Path) -> None:
    with tollgate_server(connection.settings_dict["NAME"], tmp_path / "server.log",
                         TOLLGATE_TRUSTED_PROXIES="127.0.0.1") as url:
        first, other = statuses_from_two_addresses(url)
    assert first == [200] * ADDRESS_ACCOUNT_LIMIT + [429]
    assert other == 200  # another client behind the same proxy is not throttled with the first


def test_an_untrusted_peer_cannot_pick_its_address(alice: Party, tmp_path: Path) -> None:
    with tollgate_server(connection.settings_dict["NAME"], tmp_path / "server.log",
                         TOLLGATE_TRUSTED_PROXIES="192.0.2.1") as url:
        first, other = statuses_from_two_addresses(url)
    assert first == [200] * ADDRESS_ACCOUNT_LIMIT + [429]
    assert other == 429  # the header is ignored: both are 127.0.0.1, whatever they claim


def reset_link(url: str, outbox: Path) -> str:
    """Ask for alice's reset link through a proxy that says the client used HTTPS."""
    with httpx.Client(timeout=10) as http:
        page = http.get(f"{url}/password/reset/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        host = url.removeprefix("http://")
        # Over HTTPS Django's CSRF check wants a Referer of the site's own; over HTTP it ignores it.
        answer = http.post(f"{url}/password/reset/", data={"csrfmiddlewaretoken": token, "email": "alice@example.com"},
                           headers={"X-Forwarded-Proto": "https", "Referer": f"https://{host}/password/reset/"})
    assert answer.status_code == 302, answer.text
    [file] = outbox.iterdir()
    body = email.message_from_bytes(file.read_bytes()).get_payload(decode=True).decode()  # type: ignore[union-attr]
    return next(line.strip() for line in body.splitlines() if "/password/reset/" in line)


@pytest.mark.parametrize(("trusted", "scheme"), [("127.0.0.1", "https"), ("192.0.2.1", "http")],
                         ids=["trusted", "untrusted"])
def test_a_password_reset_link_uses_the_scheme_a_trusted_proxy_forwards(
    alice: Party, tmp_path: Path, trusted: str, scheme: str
) -> None:
    alice.user.email = "alice@example.com"
    alice.user.save()
    outbox = tmp_path / "outbox"
    with tollgate_server(connection.settings_dict["NAME"], tmp_path / "server.log", TOLLGATE_TRUSTED_PROXIES=trusted,
                         TOLLGATE_TEST_OUTBOX=str(outbox)) as url:
        link = reset_link(url, outbox)
    # The host is the Host header the proxy passed on (USE_X_FORWARDED_HOST stays off).
    assert link.startswith(f"{scheme}://{url.removeprefix('http://')}/password/reset/")


def test_every_launcher_passes_the_trusted_proxies_to_uvicorn() -> None:
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    assert '--forwarded-allow-ips \\"${TOLLGATE_TRUSTED_PROXIES-127.0.0.1}\\"' in dockerfile
    assert 'CMD ["sh", "-c", "exec uvicorn ' in dockerfile  # exec: SIGTERM reaches uvicorn, not the shell
    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
    web = compose["services"]["web"]
    assert '--forwarded-allow-ips "$${TOLLGATE_TRUSTED_PROXIES-127.0.0.1}"' in " ".join(web["command"])
    assert "exec uvicorn" in " ".join(web["command"])
    assert "TOLLGATE_TRUSTED_PROXIES" in web["environment"]
    assert "TOLLGATE_TRUSTED_PROXIES" in (BASE_DIR / "tollgate").read_text()
