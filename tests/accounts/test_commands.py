from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from accounts.keys import lookup
from accounts.models import ApiKey, Tenant
from billing.models import Price

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
    assert "loaded 16 bundled prices" in first and Price.objects.filter(model="demo").exists()
    Price.objects.filter(model="gpt-4o").delete()  # an operator's choice, not undone by the next start
    second, _ = run("ensuredemo")
    assert "shown this once" not in second and "changepassword admin" in second
    assert Tenant.objects.filter(slug="demo").count() == 1
    assert "Prices:   15 rows" in second and not Price.objects.filter(model="gpt-4o").exists()
    assert User.objects.filter(is_superuser=True).count() == 1
    active = ApiKey.objects.filter(tenant__slug="demo").active()
    assert active.count() == 1
    secret = next(word for word in second.split() if word.startswith("tg-"))
    assert lookup(secret).key_id == active.get().pk
