"""The key pepper's fingerprint: keys are issued, and servers start, only under the pepper the keys were made with."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from pytest_django import Settings

from accounts import pepper, services
from accounts.keys import KeyRejected, lookup
from accounts.models import ApiKey, KeyPepper, ManagementToken
from gateway_site.settings import BASE_DIR

from ..conftest import Party
from ..factories import make_key, make_tenant
from ..live import free_port

OTHER = "a-pepper-the-keys-were-not-made-with"


def test_the_fingerprint_is_an_hmac_of_a_fixed_label_never_the_pepper(db: None) -> None:
    expected = hmac.new(b"the pepper", pepper.LABEL, hashlib.sha256).hexdigest()
    assert pepper.fingerprint("the pepper") == expected != pepper.fingerprint("another pepper")
    assert len(expected) == 64 and "the pepper" not in expected


def test_the_first_key_records_the_servers_pepper(db: None) -> None:
    assert not KeyPepper.objects.exists()
    make_key(make_tenant("acme"))
    make_key(make_tenant("zed"))
    assert list(KeyPepper.objects.values_list("fingerprint", flat=True)) == [pepper.fingerprint(settings.TOLLGATE_KEY_PEPPER)]


def test_a_key_is_never_issued_under_another_pepper(alice: Party, settings: Settings) -> None:
    settings.TOLLGATE_KEY_PEPPER = OTHER
    with pytest.raises(pepper.PepperMismatch, match="not the pepper this database's API keys were issued under"):
        services.issue_key(tenant=alice.tenant, name="would fail every request")
    assert not ApiKey.objects.filter(name="would fail every request").exists()


def test_rotating_under_another_pepper_keeps_the_old_key_working(alice: Party, settings: Settings) -> None:
    settings.TOLLGATE_KEY_PEPPER = OTHER
    with pytest.raises(pepper.PepperMismatch):
        services.rotate_key(key=alice.key)
    settings.TOLLGATE_KEY_PEPPER = "test-key-pepper"
    assert ApiKey.objects.get(pk=alice.key.pk).revoked_at is None
    assert lookup(alice.secret).key_id == alice.key.pk
    assert ApiKey.objects.filter(tenant=alice.tenant).count() == 1


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", [("issuekey", "alice"), ("issuetoken", "alice"), ("ensuredemo",)])
def test_commands_refuse_another_pepper_in_one_clear_line(
    alice: Party, settings: Settings, command: tuple[str, ...]
) -> None:
    keys, tokens = ApiKey.objects.count(), ManagementToken.objects.count()
    settings.TOLLGATE_KEY_PEPPER = OTHER
    with pytest.raises(CommandError, match="Rotating the key pepper") as refused:
        run(*command)
    assert "\n" not in str(refused.value)
    assert (ApiKey.objects.count(), ManagementToken.objects.count()) == (keys, tokens)


def test_the_api_and_the_keys_page_refuse_another_pepper_without_a_500(alice: Party, settings: Settings) -> None:
    signed_in = Client()  # a session: management tokens are digested under the pepper too
    signed_in.force_login(alice.user)
    settings.TOLLGATE_KEY_PEPPER = OTHER
    refused = signed_in.post("/api/keys/", {"tenant": "alice", "name": "backend"}, content_type="application/json")
    assert refused.status_code == 400 and "Rotating the key pepper" in str(refused.json())
    shown = signed_in.post("/keys/", {"name": "backend"})
    assert shown.status_code == 200 and "Rotating the key pepper" in shown.content.decode()
    assert not ApiKey.objects.filter(name="backend").exists()


def test_rotating_on_the_keys_page_under_another_pepper_is_a_message_not_a_500(alice: Party, settings: Settings) -> None:
    signed_in = Client()
    signed_in.force_login(alice.user)
    settings.TOLLGATE_KEY_PEPPER = OTHER
    shown = signed_in.post(f"/keys/{alice.key.pk}/rotate/", follow=True)
    assert shown.status_code == 200 and "Rotating the key pepper" in shown.content.decode()
    assert ApiKey.objects.get(pk=alice.key.pk).revoked_at is None


def test_a_management_token_is_never_issued_under_another_pepper(alice: Party, settings: Settings) -> None:
    settings.TOLLGATE_KEY_PEPPER = OTHER
    with pytest.raises(pepper.PepperMismatch):
        services.issue_management_token(user=alice.user, name="would never sign in")
    assert not ManagementToken.objects.filter(name="would never sign in").exists()


def test_startup_records_the_pepper_or_names_the_mismatch(db: None, settings: Settings) -> None:
    assert pepper.startup_problem() is None
    assert pepper.recorded() == pepper.fingerprint()
    settings.TOLLGATE_KEY_PEPPER = OTHER
    problem = pepper.startup_problem()
    assert problem is not None and "\n" not in problem and OTHER not in problem
    assert pepper.fingerprint("test-key-pepper")[: pepper.SHOWN] in problem


def test_two_peppers_racing_on_an_empty_table_leave_the_first_one(db: None) -> None:
    KeyPepper.objects.create(fingerprint=pepper.fingerprint("first"))
    assert pepper.record(pepper.fingerprint("second")) == pepper.fingerprint("first")
    assert list(KeyPepper.objects.values_list("fingerprint", flat=True)) == [pepper.fingerprint("first")]


def test_rotatepepper_revokes_the_old_peppers_keys_and_records_the_new_one(
    alice: Party, bob: Party, settings: Settings
) -> None:
    services.issue_management_token(user=alice.user, name="ci")
    with pytest.raises(CommandError, match="nothing to rotate"):
        run("rotatepepper", "--yes")
    settings.TOLLGATE_KEY_PEPPER = OTHER
    with pytest.raises(CommandError, match="revokes 2 active API keys and 1 management tokens"):
        run("rotatepepper")
    assert ApiKey.objects.active().count() == 2  # nothing happened without --yes
    out, _ = run("rotatepepper", "--yes")
    assert "Revoked 2 API keys and 1 management tokens" in out
    assert not ApiKey.objects.active().exists() and not ManagementToken.objects.filter(revoked_at__isnull=True).exists()
    assert pepper.recorded() == pepper.fingerprint(OTHER)
    with pytest.raises(KeyRejected):
        lookup(alice.secret)
    key, secret = services.issue_key(tenant=alice.tenant, name="under the new pepper")
    assert lookup(secret).key_id == key.pk


def serve(key_pepper: str, *command: str) -> subprocess.CompletedProcess[str]:
    """Run the command in a fresh interpreter on the test database, with the startup check on."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test", "TOLLGATE_PEPPER_CHECK": "on",
           "TOLLGATE_LIVE_TEST_DATABASE": connection.settings_dict["NAME"], "TOLLGATE_KEY_PEPPER": key_pepper}
    return subprocess.run([sys.executable, *command], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60)


REFUSAL = "Tollgate cannot start: TOLLGATE_KEY_PEPPER is not the pepper this database's API keys were issued under"


@pytest.mark.django_db(transaction=True)
def test_a_server_under_another_pepper_exits_with_one_line(alice: Party) -> None:
    refused = serve(OTHER, "-c", "import gateway_site.asgi")  # what uvicorn does first
    assert refused.returncode == 3  # uvicorn's "failed to start"
    assert refused.stderr.strip().count("\n") == 0 and refused.stderr.startswith(REFUSAL)
    # Workers import the application inside their event loop; the supervisor stops rather than restart them.
    workers = serve(OTHER, "-m", "uvicorn", "gateway_site.asgi:application", "--port", str(free_port()),
                    "--workers", "2", "--lifespan", "off")
    assert REFUSAL in workers.stderr and "failed to start, stopping the parent process" in workers.stderr
    assert "Traceback" not in workers.stderr
    started = serve("test-key-pepper", "-c", "import gateway_site.asgi")
    assert started.returncode == 0, started.stderr
