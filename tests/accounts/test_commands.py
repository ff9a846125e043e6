from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from pytest_django import Settings

from accounts import pepper
from accounts.keys import lookup
from accounts.models import ApiKey, Tenant
from billing.management.commands.loadprices import BUNDLED
from billing.models import Price
from gateway_site.settings import BASE_DIR

from ..conftest import Party


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_createtenant_then_issuekey_prints_a_working_key_once(db: None) -> None:
    run("createtenant", "acme", "--name", "Acme", "--timezone", "America/New_York", "--contact-email", "ops@acme.test")
    tenant = Tenant.objects.get(slug="acme")
    assert (tenant.timezone, tenant.contact_email_list()) == ("America/New_York", ["ops@acme.test"])
    out, err = run("issuekey", "acme", "--name", "backend", "--model", "demo", "--expires-in-days", "30")
    secret = out.strip()
    caller = lookup(secret)
    assert caller.tenant_slug == "acme" and caller.allowed_models == ("demo",)
    assert secret not in err and "not shown again" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (("createtenant", "bad slug!"), "slug"),
        (("createtenant", "zed", "--timezone", "Mars/Olympus"), "timezone"),
        (("createtenant", "zed", "--contact-email", "not-an-email"), "contact_emails"),
        (("issuekey", "nobody"), "No tenant"),
    ],
)
def test_commands_explain_bad_input(db: None, args: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run(*args)


def test_issuekey_rejects_nonpositive_expiry(alice: Party) -> None:
    with pytest.raises(CommandError, match="at least 1"):
        run("issuekey", "alice", "--expires-in-days", "0")


def test_ensuredemo_is_idempotent_and_prints_a_working_key(db: None) -> None:
    first, _ = run("ensuredemo", "--base-url", "http://127.0.0.1:9000")
    assert "http://127.0.0.1:9000/admin/" in first and "password" in first
    assert 'base_url="http://127.0.0.1:9000/v1"' in first and "Pages:    http://127.0.0.1:9000/ " in first
    bundled = len(json.loads(BUNDLED.read_text()))
    assert f"loaded {bundled} bundled prices" in first and Price.objects.filter(model="demo").exists()
    Price.objects.filter(model="gpt-4o").delete()  # an operator's choice, not undone by the next start
    second, _ = run("ensuredemo")
    assert "shown this once" not in second and "changepassword admin" in second
    assert Tenant.objects.filter(slug="demo").count() == 1
    assert f"Prices:   {bundled - 1} rows" in second and not Price.objects.filter(model="gpt-4o").exists()
    assert User.objects.filter(is_superuser=True).count() == 1
    active = ApiKey.objects.filter(tenant__slug="demo").active()
    assert active.count() == 1
    secret = next(word for word in second.split() if word.startswith("tg-"))
    assert lookup(secret).key_id == active.get().pk


def test_ensuredemo_tells_where_emails_go(db: None, settings: Settings, tmp_path: Path) -> None:
    settings.EMAIL_BACKEND = "gateway_site.mail.OutboxBackend"
    settings.EMAIL_FILE_PATH = tmp_path / "outbox"
    out, _ = run("ensuredemo")
    assert f"Emails:   written to {tmp_path / 'outbox'}/, one .eml file each, readable only by you" in out
    assert "./tollgate manage" in out


def plain_shell(data_dir: Path, **env: str) -> dict[str, str]:
    """A new terminal's environment: none of this test run's secrets, settings, database or Redis."""
    skip = ("DJANGO_", "TOLLGATE_", "DATABASE_URL", "REDIS_URL", "EMAIL_", "PYTEST")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(skip)}, "TOLLGATE_DATA_DIR": str(data_dir), **env}


def shell(env: dict[str, str], *command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    # A session of its own has no terminal, so changepassword reads the piped password instead of waiting on a tty.
    return subprocess.run(command, cwd=BASE_DIR, env=env, input=stdin, capture_output=True, text=True, timeout=180,
                          start_new_session=True)


def write_secrets_as_tollgate_run_does(data_dir: Path) -> str:
    """The two files `./tollgate run` generates on its first start. Returns the pepper."""
    data_dir.mkdir(exist_ok=True)
    for name in ("secret_key", "key_pepper"):
        (data_dir / name).write_text(secrets.token_urlsafe(48) + "\n")
        (data_dir / name).chmod(0o600)
    return (data_dir / "key_pepper").read_text().strip()


def test_the_readmes_commands_work_from_a_plain_shell_after_tollgate_run(tmp_path: Path) -> None:
    key_pepper = write_secrets_as_tollgate_run_does(tmp_path)
    env = plain_shell(tmp_path)
    manage = (sys.executable, "manage.py")
    for command in [
        (*manage, "migrate", "--noinput", "-v0"),  # ./tollgate run's first step
        (*manage, "createtenant", "acme", "--name", "Acme", "--timezone", "Europe/Berlin", "--contact-email", "ops@acme.example"),
        (*manage, "loadprices"),
        (*manage, "createsuperuser", "--noinput", "--username", "ops", "--email", "ops@acme.example"),
        (*manage, "issuetoken", "ops", "--name", "deploys"),
        (sys.executable, "-m", "celery", "-A", "gateway_site", "call", "billing.tasks.check_budget_alerts"),
    ]:
        done = shell({**env, "DJANGO_SUPERUSER_PASSWORD": "a long pass phrase 42"}, *command)
        assert done.returncode == 0, (command, done.stderr)
    assert list((tmp_path / "celery" / "queue").iterdir()), "the task went to the embedded broker's queue"
    changed = shell(env, *manage, "changepassword", "ops", stdin="another long pass phrase 7\n" * 2)
    assert changed.returncode == 0 and "changed successfully" in changed.stdout, changed.stderr
    # The workaround, DJANGO_DEBUG=1, now finds the same pepper: its key works on the server too.
    issued = [shell(env, *manage, "issuekey", "acme", "--name", "backend", "--model", "demo"),
              shell({**env, "DJANGO_DEBUG": "1"}, *manage, "issuekey", "acme", "--name", "debugging")]
    with sqlite3.connect(tmp_path / "tollgate.sqlite3") as database:
        for done in issued:
            assert done.returncode == 0, done.stderr
            key = done.stdout.strip()
            prefix = key.split("-")[1]
            (digest,) = database.execute("SELECT digest FROM accounts_apikey WHERE prefix = ?", (prefix,)).fetchone()
            assert digest == hmac.new(key_pepper.encode(), key.encode(), hashlib.sha256).hexdigest()
        (recorded,) = database.execute("SELECT fingerprint FROM accounts_keypepper").fetchone()
    assert recorded == pepper.fingerprint(key_pepper)


@pytest.mark.parametrize(
    "env, refusal",
    [
        # A deployment names its database, so it must name its secrets: var/'s files are not read.
        ({"DATABASE_URL": "sqlite:////tmp/tollgate-production-like.sqlite3"}, "DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) must be set"),
        ({"DATABASE_URL": "sqlite:////tmp/tollgate-production-like.sqlite3", "DJANGO_SECRET_KEY": "explicit"},
         "TOLLGATE_KEY_PEPPER (or TOLLGATE_KEY_PEPPER_FILE) must be set"),
    ],
)
def test_production_still_refuses_to_start_without_explicit_secrets(
    tmp_path: Path, env: dict[str, str], refusal: str
) -> None:
    write_secrets_as_tollgate_run_does(tmp_path)
    done = shell(plain_shell(tmp_path, **env), sys.executable, "manage.py", "check")
    assert done.returncode != 0 and "ImproperlyConfigured" in done.stderr and refusal in done.stderr


def test_the_embedded_default_without_secrets_says_how_to_make_them(tmp_path: Path) -> None:
    done = shell(plain_shell(tmp_path), sys.executable, "manage.py", "check")
    assert done.returncode != 0
    assert f"`./tollgate run` or `./tollgate manage` writes {tmp_path / 'secret_key'}" in done.stderr
