"""Configuration as code (`manage.py tollgate export|apply`, gateway_site/configfile): a file moves the operator
configuration between databases by natural keys, apply shows its diff and changes nothing without --yes, and no
secret is ever written."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from datetime import date
from decimal import Decimal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from accounts.models import Project, Tenant
from billing.models import Budget, Price, UsageRecord
from gateway_site import changes
from gateway_site.configfile import load
from proxy import limits, routing
from proxy.models import Deployment, ModelRoute, Provider

from ..factories import make_key, make_tenant

ROOT = Path(__file__).resolve().parents[2]
STORED_KEY = "sk-stored-secret-4f1c9e"
WEBHOOK_SECRET = "whsec_do-not-export-7d2a"


def export() -> str:
    out = io.StringIO()
    call_command("tollgate", "export", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def apply(path: Path, *args: str) -> str:
    out = io.StringIO()
    call_command("tollgate", "apply", str(path), *args, stdout=out)
    return out.getvalue()


def write(tmp_path: Path, text: str, name: str = "tollgate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def build_rich_config() -> None:
    """Every kind of object the file carries, with values off their defaults."""
    openai = Provider(name="openai", kind="openai_compatible", preset="openai")
    openai.set_credential(STORED_KEY)
    openai.save()
    anthropic = Provider.objects.create(name="anthropic", kind="anthropic", credential_env="ANTHROPIC_API_KEY")
    Provider.objects.create(name="azure-eu", kind="azure", base_url="https://eu.openai.azure.com",
                            api_version="2024-10-21", is_active=False)
    Provider.objects.create(name="bedrock", kind="bedrock", region="us-east-1")
    claude = ModelRoute.objects.create(name="claude", aliases=["sonnet"])
    Deployment.objects.create(route=claude, provider=anthropic, upstream_model="claude-sonnet-4-5")
    gpt = ModelRoute.objects.create(
        name="gpt-4o", aliases=["gpt4o", "default"], strip_prefix="Proxy/", max_attempts=3, retry_budget_seconds=20,
        fallbacks=["claude"], context_window_fallbacks=["sonnet"], cache_enabled=True, cache_ttl_seconds=60,
        cache_cost="full", batch_queue="bulk", batch_discount_percent=Decimal("25.50"))
    Deployment.objects.create(route=gpt, provider=openai, upstream_model="gpt-4o-2024-08-06", weight=3)
    Deployment.objects.create(route=gpt, provider=Provider.objects.get(name="azure-eu"), upstream_model="gpt-4o",
                              is_active=False)
    Price.objects.create(model="gpt-4o", effective_from=date(2026, 1, 1), input_per_million=Decimal("2.5"),
                         output_per_million=Decimal("10"), cached_input_per_million=Decimal("1.25"))
    Price.objects.create(model="gpt-4o-2024-08-06", provider=openai, effective_from=date(2026, 2, 1),
                         input_per_million=Decimal("2.000001"), output_per_million=Decimal("8"),
                         per_request=Decimal("0.001"), batch_discount_percent=Decimal("50"), note="contract")
    alice = make_tenant("alice", name="Alice Inc", timezone_name="Europe/Berlin",
                        contact_emails=["ops@alice.example", "cfo@alice.example"])
    Tenant.objects.filter(pk=alice.pk).update(
        requests_per_minute=60, tokens_per_minute=100_000, max_concurrent=4, allowed_models=["gpt-4o", "claude"],
        batch_tier="high", alert_webhook_url="https://hooks.alice.example/tollgate",
        alert_webhook_secret=WEBHOOK_SECRET)
    make_tenant("bob")
    search = Project.objects.create(tenant=alice, slug="search", name="Search")
    Project.objects.create(tenant=alice, slug="support", name="Support")
    key, _ = make_key(alice, name="ci")
    Budget.objects.create(tenant=alice, amount=Decimal("500"), period="month")
    Budget.objects.create(tenant=alice, amount=Decimal("100"), period="month", hard=False, alert_thresholds="80")
    Budget.objects.create(tenant=alice, project=search, amount=Decimal("50"), period="day", name="search daily")
    Budget.objects.create(tenant=alice, model="gpt-4o*", amount=Decimal("20.123456"), period="week")
    Budget.objects.create(tenant=alice, tag="team:search", amount=Decimal("5"), period="day", set_by="tenant")
    Budget.objects.create(tenant=alice, end_user="user-42", amount=Decimal("1"), period="day", is_active=False)
    Budget.objects.create(tenant=alice, project=search, model="claude", tag="env:prod", end_user="u1",
                          amount=Decimal("2"), period="month")
    Budget.objects.create(tenant=alice, project=search, model="claude", amount=Decimal("900"), period="lifetime")
    Budget.objects.create(tenant=alice, key=key, amount=Decimal("3"), period="day")  # left out: keys stay behind


def empty_database() -> None:
    Budget.objects.all().delete()
    Tenant.objects.all().delete()
    Price.objects.all().delete()
    ModelRoute.objects.all().delete()
    Provider.objects.all().delete()


@pytest.mark.django_db
def test_export_then_apply_on_an_empty_database_exports_the_same_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_rich_config()
    first = export()
    empty_database()
    assert yaml.safe_load(export()) == {"version": 1, "providers": [], "routes": [], "prices": [], "tenants": []}
    monkeypatch.setenv("TOLLGATE_PROVIDER_OPENAI_KEY", STORED_KEY)
    out = apply(write(tmp_path, first), "--yes")
    assert "+ provider openai" in out and "+ budget alice day, project search \"search daily\"" in out
    assert "applied: " in out
    assert export() == first
    assert Provider.objects.get(name="openai").credential() == STORED_KEY  # stored encrypted, as the admin does
    assert Provider.objects.get(name="anthropic").credential_env == "ANTHROPIC_API_KEY"
    assert Budget.objects.filter(tenant__slug="alice", key__isnull=True).count() == 8


@pytest.mark.django_db
def test_the_export_carries_every_kind_of_object_by_natural_keys() -> None:
    build_rich_config()
    out, err = io.StringIO(), io.StringIO()
    call_command("tollgate", "export", stdout=out, stderr=err)
    document = load.parse(out.getvalue())
    assert [p["name"] for p in document["providers"]] == ["anthropic", "azure-eu", "bedrock", "openai"]
    gpt = next(r for r in document["routes"] if r["name"] == "gpt-4o")
    assert gpt["fallbacks"] == ["claude"] and gpt["aliases"] == ["gpt4o", "default"]
    assert gpt["batch_discount_percent"] == "25.5"
    assert gpt["deployments"][1] == {"provider": "openai", "upstream_model": "gpt-4o-2024-08-06", "weight": 3}
    alice = document["tenants"][0]
    assert alice["slug"] == "alice" and alice["requests_per_minute"] == 60
    assert alice["allowed_models"] == ["gpt-4o", "claude"]
    assert alice["contact_emails"] == ["ops@alice.example", "cfo@alice.example"]
    assert [p["slug"] for p in alice["projects"]] == ["search", "support"]
    assert {b.get("tag") for b in alice["budgets"]} >= {"team:search", "env:prod"}
    assert document["tenants"][1] == {"slug": "bob", "name": "Bob"}  # defaults are left out
    assert "1 key budget(s) left out" in err.getvalue()
    assert '"id"' not in out.getvalue() and "pk:" not in out.getvalue()


@pytest.mark.django_db
def test_export_to_a_file_writes_what_standard_output_gets(tmp_path: Path) -> None:
    build_rich_config()
    call_command("tollgate", "export", "-o", str(tmp_path / "out.yaml"), stdout=io.StringIO(), stderr=io.StringIO())
    assert (tmp_path / "out.yaml").read_text() == export()


@pytest.mark.django_db
def test_no_secret_value_reaches_the_export_or_the_diff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_rich_config()
    text = export()
    assert STORED_KEY not in text and WEBHOOK_SECRET not in text
    assert "credential: ${TOLLGATE_PROVIDER_OPENAI_KEY}" in text
    assert "credential_env: ANTHROPIC_API_KEY" in text
    monkeypatch.setenv("TOLLGATE_PROVIDER_OPENAI_KEY", "sk-rotated-value-91b")
    out = apply(write(tmp_path, text))
    assert "~ provider openai" in out and "credential: a stored key → ${TOLLGATE_PROVIDER_OPENAI_KEY}" in out
    assert "sk-rotated-value-91b" not in out and STORED_KEY not in out
    assert Provider.objects.get(name="openai").credential() == STORED_KEY  # a dry run


@pytest.mark.django_db
def test_applying_twice_changes_nothing_the_second_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_rich_config()
    text = export()
    empty_database()
    monkeypatch.setenv("TOLLGATE_PROVIDER_OPENAI_KEY", STORED_KEY)
    path = write(tmp_path, text)
    apply(path, "--yes")
    assert apply(path, "--yes").startswith("no changes")
    assert apply(path).startswith("no changes")


@pytest.mark.django_db
def test_changes_applied_from_a_file_are_in_the_audit_log_as_such(tmp_path: Path) -> None:
    from auditlog.models import LogEntry

    path = write(tmp_path, "version: 1\ntenants:\n  - slug: acme\n    name: Acme\n")
    apply(path)
    assert not LogEntry.objects.exists()  # a dry run leaves nothing, in the log either
    apply(path, "--yes")
    [entry] = LogEntry.objects.all()
    assert entry.object_repr == "Acme" and entry.additional_data["source"] == "command"
    assert entry.additional_data["verb"] == "config apply"


@pytest.mark.django_db
def test_the_dry_run_shows_the_diff_and_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_rich_config()
    monkeypatch.setenv("TOLLGATE_PROVIDER_OPENAI_KEY", STORED_KEY)
    before = export()
    edited = (before.replace("requests_per_minute: 60", "requests_per_minute: 120")
              .replace("- name: claude\n", "- name: claude\n  max_attempts: 2\n", 1)
              + "- slug: carol\n  name: Carol\n")
    out = apply(write(tmp_path, edited))
    assert "~ tenant alice\n    requests_per_minute: 60 → 120\n" in out
    assert "~ route claude\n    max_attempts: null → 2\n" in out
    assert "+ tenant carol\n    name: \"Carol\"\n" in out
    assert "would apply (dry run; --yes applies): 1 to create, 2 to update, 0 to delete" in out
    assert export() == before and not Tenant.objects.filter(slug="carol").exists()
    applied = apply(write(tmp_path, edited), "--yes")
    assert applied.replace("applied:", "would apply (dry run; --yes applies):") == out
    assert Tenant.objects.get(slug="alice").requests_per_minute == 120


@pytest.mark.django_db
def test_what_the_file_leaves_out_is_kept_unless_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_rich_config()
    monkeypatch.setenv("TOLLGATE_PROVIDER_OPENAI_KEY", STORED_KEY)
    document = yaml.safe_load(export())
    document["prices"] = [p for p in document["prices"] if p["model"] != "gpt-4o"]
    document["routes"] = [r for r in document["routes"] if r["name"] != "gpt-4o"]
    document["providers"] = [p for p in document["providers"] if p["name"] != "azure-eu"]
    document["tenants"] = [t for t in document["tenants"] if t["slug"] != "bob"]
    alice = document["tenants"][0]
    alice["projects"] = [p for p in alice["projects"] if p["slug"] != "support"]
    path = write(tmp_path, yaml.safe_dump(document))
    out = apply(path, "--yes")
    assert out.startswith("no changes; 7 object(s) in the database but not in the file kept")
    out = apply(path, "--yes", "--prune")
    assert ("- project alice/support\n- price gpt-4o from 2026-01-01\n- deployment gpt-4o → azure-eu/gpt-4o\n"
            "- deployment gpt-4o → openai/gpt-4o-2024-08-06\n- route gpt-4o\n- provider azure-eu\n") in out
    assert "note: 1 tenant(s) not in the file kept: apply never deletes a tenant" in out
    assert not ModelRoute.objects.filter(name="gpt-4o").exists() and Tenant.objects.filter(slug="bob").exists()
    assert Budget.objects.filter(key__isnull=False).count() == 1  # key budgets are never the file's to prune
    assert apply(path, "--prune").startswith("no changes")


@pytest.mark.django_db
def test_prune_refuses_to_delete_a_price_the_ledger_was_charged_at(tmp_path: Path) -> None:
    build_rich_config()
    price = Price.objects.get(model="gpt-4o")
    UsageRecord.objects.create(tenant=Tenant.objects.get(slug="alice"), endpoint="chat", end_reason="complete",
                               status_code=200, price=price)
    path = write(tmp_path, "version: 1\n")
    with pytest.raises(CommandError, match=r"price gpt-4o from 2026-01-01 is not in the file, but --prune cannot "
                                           r"delete it: usage records were charged at it"):
        apply(path, "--yes", "--prune")
    assert Price.objects.filter(pk=price.pk).exists() and ModelRoute.objects.count() == 2


@pytest.mark.django_db
def test_apply_makes_running_processes_drop_their_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_rich_config()
    monkeypatch.setenv("TOLLGATE_PROVIDER_OPENAI_KEY", STORED_KEY)
    text = export().replace("- name: claude\n", "- name: claude\n  max_attempts: 2\n", 1)
    text = text.replace("amount: '500'", "amount: '600'")
    routing._table = routing.load_table()
    monkeypatch.setattr(limits, "_budgets", object())
    out = apply(write(tmp_path, text), "--yes")
    # Of the two month budgets with the same scope, the one whose amount changed is updated; nothing is recreated.
    assert "~ budget alice month\n    amount: \"500\" → \"600\"\n" in out and "+ budget" not in out
    assert routing._table is None and limits._budgets is None  # reloaded from the database on the next request
    assert ModelRoute.objects.get(name="claude").max_attempts == 2


@pytest.mark.django_db
@override_settings(REDIS_URL="redis://127.0.0.1:6379/7")  # publish is replaced: nothing connects
def test_apply_announces_its_changes_to_other_processes_after_commit_and_a_dry_run_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        django_capture_on_commit_callbacks: Callable[..., Any]) -> None:
    published: list[str] = []
    monkeypatch.setattr(changes, "publish", lambda url, kind, detail: published.append(kind))
    text = ("version: 1\nproviders:\n- name: demo\n  kind: demo\nroutes:\n- name: demo\n  deployments:\n"
            "  - provider: demo\n    upstream_model: demo\nprices:\n- model: demo\n  effective_from: '2026-01-01'\n"
            "  input_per_million: 1\n  output_per_million: 2\ntenants:\n- slug: carol\n  name: Carol\n"
            "  budgets:\n  - amount: 5\n")
    with django_capture_on_commit_callbacks(execute=True):
        apply(write(tmp_path, text))
    assert published == []
    with django_capture_on_commit_callbacks(execute=True):
        apply(write(tmp_path, text), "--yes")
    assert {"routes", "prices", "budgets"} <= set(published)


@pytest.mark.django_db
def test_apply_reads_standard_input_for_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("version: 1\ntenants:\n- slug: carol\n  name: Carol\n"))
    out = io.StringIO()
    call_command("tollgate", "apply", "-", "--yes", stdout=out)
    assert out.getvalue().startswith("+ tenant carol\n") and Tenant.objects.filter(slug="carol").exists()


@pytest.mark.django_db
def test_a_hand_written_file_may_give_numbers_where_export_writes_strings(tmp_path: Path) -> None:
    text = ("version: 1\nprices:\n- model: m\n  effective_from: 2026-03-01\n  input_per_million: 2.5\n"
            "  output_per_million: 10\ntenants:\n- slug: carol\n  name: Carol\n  budgets:\n"
            "  - amount: 100\n    alert_thresholds: 90\n")
    apply(write(tmp_path, text), "--yes")
    price = Price.objects.get(model="m")
    assert (price.input_per_million, price.output_per_million) == (Decimal("2.5"), Decimal("10"))
    assert Budget.objects.get(tenant__slug="carol").alert_thresholds == "90"
    assert apply(write(tmp_path, text)).startswith("no changes")
    assert "alert_thresholds: '90'" in export() and "input_per_million: '2.5'" in export()


def test_the_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(load.schema())


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Configuration as code", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match, "the README's configuration-as-code section has a YAML example"
    return match.group(1)


@pytest.mark.django_db
def test_the_readme_example_validates_and_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-readme-example")
    path = write(tmp_path, readme_example())
    out = apply(path, "--yes")
    assert "+ route gpt-4o" in out and "+ budget acme day, project search, model gpt-4o*" in out
    assert Budget.objects.get(tenant__slug="acme", period="day").project == Project.objects.get(slug="search")
    assert apply(path).startswith("no changes")


@pytest.mark.django_db
@pytest.mark.parametrize(("text", "message"), [
    ("version: 1\nproviders: [name: x\n",
     r"is not valid YAML \(line 3, column 1\): expected ',' or ']', but got '<stream end>'$"),
    ("- just a list\n", r"must be a mapping"),
    ("providers: []\n", r"\(top level\): 'version' is a required property"),
    ("version: 1\ntenants:\n- slug: a\n  name: A\n  budgets:\n  - amount: '5'\n    period: yearly\n",
     r"tenants\[0\]\.budgets\[0\]\.period: 'yearly' is not one of"),
    ("version: 1\ntenants:\n- slug: a\n  name: A\n  colour: red\n",
     r"tenants\[0\]: Additional properties are not allowed \('colour' was unexpected\)"),
    ("version: 1\nprices:\n- model: m\n  effective_from: 2026-01-01\n  input_per_million: cheap\n"
     "  output_per_million: 1\n",
     r"prices\[0\]\.input_per_million: 'cheap' is not an amount"),
    ("version: 1\nproviders:\n- name: openai\n  kind: openai_compatible\n  preset: openai\n  credential: sk-live-123\n",
     r"providers\[0\]\.credential: 'sk-live-123' is not an environment-variable reference"),
    ("version: 1\nroutes:\n- name: r\n  deployments:\n  - provider: nowhere\n    upstream_model: m\n",
     r"routes\[r\]\.deployments\[0\]\.provider: no provider named 'nowhere' in the file or the database"),
    ("version: 1\nproviders:\n- name: p\n  kind: openai_compatible\n  preset: openai\n  credential: ${TG_UNSET_VAR}\n",
     r"providers\[p\]\.credential: the environment variable TG_UNSET_VAR is not set"),
    ("version: 1\nroutes:\n- name: r\n  fallbacks: [ghost]\n", r"routes\[r\]\.fallbacks: no route answers to ghost"),
    ("version: 1\ntenants:\n- slug: a\n  name: A\n  budgets:\n  - amount: 5\n    project: nope\n",
     r"tenants\[a\]\.budgets\[0\]\.project: tenant a has no project 'nope'"),
    ("version: 1\ntenants:\n- slug: a\n  name: A\n- slug: a\n  name: B\n", r"tenants: tenant a appears more than once"),
])
def test_a_bad_file_is_one_clear_error_and_nothing_is_applied(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        apply(write(tmp_path, text), "--yes")
    assert not Tenant.objects.exists() and not ModelRoute.objects.exists()


@pytest.mark.django_db
def test_an_invalid_value_late_in_the_file_rolls_everything_back(tmp_path: Path) -> None:
    text = ("version: 1\nproviders:\n- name: demo\n  kind: demo\nroutes:\n- name: demo\n  deployments:\n"
            "  - provider: demo\n    upstream_model: demo\n"
            "tenants:\n- slug: moon\n  name: Moon\n  timezone: Mars/Base\n")
    for args in ((), ("--yes",)):
        with pytest.raises(CommandError, match=r"tenant moon: timezone: 'Mars/Base' is not an IANA time zone"):
            apply(write(tmp_path, text), *args)
    assert not Provider.objects.exists() and not ModelRoute.objects.exists()


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"cannot read .*nowhere\.yaml: No such file or directory"):
        apply(tmp_path / "nowhere.yaml")


def test_from_a_shell_an_error_exits_with_status_1_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nroutes: [name: x\n")
    env = {**os.environ, "DJANGO_DEBUG": "1"}
    result = subprocess.run([sys.executable, "manage.py", "tollgate", "apply", str(path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "CommandError:" in result.stderr and "is not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr
