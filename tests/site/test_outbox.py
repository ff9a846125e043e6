"""Without an SMTP server, emails go to the outbox: one file each, readable only by its owner, never into the log."""

from __future__ import annotations

import email
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core import mail
from django.core.cache import caches
from django.test import Client
from pytest_django import Settings

from gateway_site.settings import BASE_DIR

from ..conftest import Party


@pytest.fixture
def outbox(settings: Settings, tmp_path: Path) -> Path:
    settings.EMAIL_BACKEND = "gateway_site.mail.OutboxBackend"
    settings.EMAIL_FILE_PATH = tmp_path / "outbox"
    return tmp_path / "outbox"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_each_email_is_a_file_only_its_owner_can_read_whatever_the_umask(
    outbox: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox.mkdir(mode=0o755)  # made by someone else's umask: tightened on the next email
    previous = os.umask(0)
    try:
        mail.send_mail("Budget alert", "spent $9.99 of $10.00 https://gw.example/secret-link", None, ["ops@acme.example"])
        sent = mail.send_mail("Second", "another body", None, ["a@acme.example", "b@acme.example"])
    finally:
        os.umask(previous)
    assert sent == 1
    files = sorted(outbox.iterdir())
    assert len(files) == 2 and all(file.suffix == ".eml" for file in files)
    assert mode(outbox) == 0o700 and [mode(file) for file in files] == [0o600, 0o600]
    messages = [email.message_from_bytes(file.read_bytes()) for file in files]
    first = next(message for message in messages if message["Subject"] == "Budget alert")
    assert first["To"] == "ops@acme.example" and "secret-link" in first.get_payload(decode=True).decode()
    assert "secret-link" not in caplog.text and "written to" in caplog.text


def test_a_password_reset_link_goes_to_the_outbox_not_the_log(
    alice: Party, outbox: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    alice.user.email = "alice@example.com"
    alice.user.set_password("old-password-123")
    alice.user.save()
    caches["limits"].clear()
    assert Client().post("/password/reset/", {"email": "alice@example.com"}).status_code == 302
    [file] = outbox.iterdir()
    body = email.message_from_bytes(file.read_bytes()).get_payload(decode=True).decode()
    link = next(line for line in body.splitlines() if "/password/reset/" in line)
    printed = capsys.readouterr()
    assert link not in caplog.text and link not in printed.out and link not in printed.err


def email_settings(**env: str) -> str:
    """EMAIL_BACKEND and EMAIL_FILE_PATH as the real settings choose them."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TOLLGATE_", "EMAIL_", "DATABASE_URL"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "gateway_site.settings", "DJANGO_SECRET_KEY": "s", "TOLLGATE_KEY_PEPPER": "p",
                  "TOLLGATE_DATA_DIR": "/tmp/tollgate-outbox-test", **env})
    code = "from django.conf import settings; print(settings.EMAIL_BACKEND, settings.EMAIL_FILE_PATH)"
    done = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=clean, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_embedded_default_uses_the_outbox_and_an_smtp_host_is_used_when_set() -> None:
    assert email_settings() == "gateway_site.mail.OutboxBackend /tmp/tollgate-outbox-test/outbox"
    assert email_settings(EMAIL_HOST="smtp.example.com").startswith("django.core.mail.backends.smtp.EmailBackend ")
