"""An invitation in a real browser: an owner invites, the invitee opens the emailed link, sets a password and lands on
the tenant as a member, and the owner removes them. The live server writes its emails as files for the test to read."""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection

from accounts.models import Invitation, Membership

from ..conftest import make_party
from ..live import BASE_DIR, tollgate_server
from .test_browser import PASSWORD, chromium, shot, sign_in  # noqa: F401 (chromium is a fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


@pytest.fixture(scope="module")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outbox")


@pytest.fixture(scope="module")
def site(django_db_setup: None, outbox: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("site")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test", "TOLLGATE_DATA_DIR": str(data)}
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=BASE_DIR, env=env, check=True)
    with tollgate_server(connection.settings_dict["NAME"], data / "tollgate.log", TOLLGATE_DATA_DIR=str(data),
                         TOLLGATE_TEST_OUTBOX=str(outbox)) as url:
        yield url


def emailed_link(outbox: Path) -> str:
    [file] = outbox.iterdir()
    message = email.message_from_bytes(file.read_bytes())
    assert message["To"] == "carol@example.com"
    body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    [link] = re.findall(r"http://\S+/invite/\S+/", body)
    return link


def test_an_owner_invites_the_invitee_joins_and_is_removed(chromium: Any, site: str, outbox: Path) -> None:  # noqa: F811
    alice = make_party("alice")
    alice.user.set_password(PASSWORD)
    alice.user.save()

    # The owner sends an invitation from the Members page.
    owner = sign_in(chromium, site, "alice")
    owner.get_by_role("link", name="Members").click()
    owner.get_by_label("Email", exact=True).fill("carol@example.com")
    owner.get_by_label("Role", exact=True).select_option("member")
    owner.get_by_role("button", name="Send invitation").click()
    owner.get_by_text("Invitation sent to carol@example.com").wait_for()
    assert owner.get_by_role("cell", name="carol@example.com", exact=True).is_visible()
    shot(owner, "invitations-01-sent")

    # The invitee opens the emailed link, signed out, and chooses a password.
    link = emailed_link(outbox)
    assert link.startswith(f"{site}/invite/")
    invitee = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
    invitee.goto(link)
    assert invitee.get_by_role("heading", name="Join Alice").is_visible()
    shot(invitee, "invitations-02-accept")
    invitee.get_by_label("Name").fill("Carol")
    invitee.get_by_label("Password", exact=True).fill("a-long-invitee-password-42")
    invitee.get_by_label("Password again").fill("a-long-invitee-password-42")
    invitee.get_by_role("button", name="Create account and join").click()
    invitee.wait_for_url(f"{site}/")
    assert invitee.get_by_text("Welcome to Alice.").is_visible()
    assert invitee.get_by_text("carol@example.com · Member").is_visible()
    shot(invitee, "invitations-03-joined")
    carol = User.objects.get(username="carol@example.com")
    assert Membership.objects.get(tenant=alice.tenant, user=carol).role == Membership.Role.MEMBER
    assert Invitation.objects.get(tenant=alice.tenant).status() == "accepted"

    # The link works once.
    again = chromium.new_context().new_page()
    assert again.goto(link).status == 410
    assert again.get_by_text("already accepted").is_visible()

    # The owner removes the new member; the member's pages then say they belong to no tenant.
    owner.goto(f"{site}/members/")
    owner.get_by_role("button", name="Remove carol@example.com").click()
    owner.get_by_text("carol@example.com is no longer a member of Alice.").wait_for()
    shot(owner, "invitations-04-removed")
    assert not Membership.objects.filter(tenant=alice.tenant, user=carol).exists()
    assert invitee.goto(f"{site}/").status == 403
    assert invitee.get_by_text("You are not a member of any tenant yet").is_visible()
