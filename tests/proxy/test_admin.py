from __future__ import annotations

import logging

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing.models import UsageRecord
from proxy import routing
from proxy.admin import PRESET_LABELS
from proxy.models import ModelRoute, Provider
from proxy.providers.compatible import PRESETS

from ..conftest import Party

UPSTREAM_KEY = "sk-upstream-very-secret-0123456789"


def provider_form(**fields: str) -> dict[str, str]:
    return {"name": "openai", "kind": "openai_compatible", "preset": "openai", "base_url": "", "api_key": "",
            "credential_env": "", "is_active": "on", **fields}


def test_provider_key_is_encrypted_and_never_shown_back(admin_client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.post("/admin/proxy/provider/add/", provider_form(api_key=UPSTREAM_KEY))
    assert response.status_code == 302, response.content
    provider = Provider.objects.get(name="openai")
    assert UPSTREAM_KEY not in provider.credential_encrypted and provider.credential() == UPSTREAM_KEY
    page = admin_client.get(f"/admin/proxy/provider/{provider.pk}/change/").content.decode()
    listing = admin_client.get("/admin/proxy/provider/").content.decode()
    assert UPSTREAM_KEY not in page and UPSTREAM_KEY not in listing and "stored (encrypted)" in listing
    assert provider.credential_encrypted not in page
    assert UPSTREAM_KEY not in caplog.text
    assert all(UPSTREAM_KEY not in str(q["sql"]) for q in queries.captured_queries)

    # Saving again with the field blank keeps the key; "clear" removes it.
    admin_client.post(f"/admin/proxy/provider/{provider.pk}/change/", provider_form())
    assert Provider.objects.get(pk=provider.pk).credential() == UPSTREAM_KEY
    admin_client.post(f"/admin/proxy/provider/{provider.pk}/change/", provider_form(clear_api_key="on"))
    assert Provider.objects.get(pk=provider.pk).credential() == ""


def test_provider_key_from_environment(admin_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_LLM_KEY", UPSTREAM_KEY)
    admin_client.post("/admin/proxy/provider/add/", provider_form(credential_env="ACME_LLM_KEY"))
    assert Provider.objects.get(name="openai").credential() == UPSTREAM_KEY
    response = admin_client.post("/admin/proxy/provider/add/", provider_form(name="bad", credential_env="not a name"))
    assert response.status_code == 200 and not Provider.objects.filter(name="bad").exists()


def test_route_with_deployment_is_served_at_once(admin_client: Client) -> None:
    admin_client.post("/admin/proxy/provider/add/", provider_form(api_key=UPSTREAM_KEY))
    provider = Provider.objects.get(name="openai")
    data = {
        "name": "gpt-4o", "aliases": '["default"]', "strip_prefix": "Proxy/", "is_active": "on",
        "deployments-TOTAL_FORMS": "1", "deployments-INITIAL_FORMS": "0",
        "deployments-0-provider": provider.pk, "deployments-0-upstream_model": "gpt-4o-2024-08-06",
        "deployments-0-weight": "1", "deployments-0-is_active": "on",
    }
    routing._table = routing.load_table()  # this process's cached table, from before the change
    assert admin_client.post("/admin/proxy/modelroute/add/", data).status_code == 302
    assert routing._table is None  # saving the route dropped it, so the next request reloads
    table = routing.load_table()
    for name in ("gpt-4o", "default", "Proxy/gpt-4o", "Proxy/default"):
        [choice] = table.routes[name]
        assert (choice.target.public_model, choice.target.upstream_model) == ("gpt-4o", "gpt-4o-2024-08-06")
        assert choice.target.base_url == "https://api.openai.com/v1" and choice.target.api_key == UPSTREAM_KEY
    assert table.models == ("gpt-4o",)


def test_presets_show_readable_names(admin_client: Client) -> None:
    assert set(PRESETS) <= set(PRESET_LABELS)  # a new preset gets its name here
    form = admin_client.get("/admin/proxy/provider/add/").content.decode()
    for preset in ("lmstudio", "vllm", "openrouter", "custom"):
        assert f'<option value="{preset}">{PRESET_LABELS[preset]}</option>' in form
    assert '<option value="lmstudio">lmstudio</option>' not in form
    admin_client.post("/admin/proxy/provider/add/", provider_form(name="studio", preset="lmstudio"))
    assert Provider.objects.get(name="studio").preset == "lmstudio"
    listing = admin_client.get("/admin/proxy/provider/").content.decode()
    assert '<td class="field-preset_name">LM Studio</td>' in listing
    rejected = admin_client.post("/admin/proxy/provider/add/", provider_form(name="odd", preset="nonesuch"))
    assert rejected.status_code == 200 and not Provider.objects.filter(name="odd").exists()


def test_route_aliases_are_a_comma_or_newline_list(admin_client: Client) -> None:
    data = {"name": "gpt-4o", "aliases": "default,\r\ngpt4o, default", "strip_prefix": "", "is_active": "on",
            "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"}
    assert admin_client.post("/admin/proxy/modelroute/add/", data).status_code == 302
    route = ModelRoute.objects.get(name="gpt-4o")
    assert route.aliases == ["default", "gpt4o"]
    assert "default, gpt4o</textarea>" in admin_client.get(f"/admin/proxy/modelroute/{route.pk}/change/").content.decode()
    broken = admin_client.post("/admin/proxy/modelroute/add/", {**data, "name": "o3", "aliases": '[""]'})
    assert broken.status_code == 200 and "Every model name must be a non-empty string." in broken.content.decode()


def test_route_retries_fallbacks_and_cache_are_grouped_and_fallbacks_never_name_the_route(admin_client: Client) -> None:
    base = {"name": "gpt-4o", "aliases": "default", "strip_prefix": "Proxy/", "is_active": "on",
            "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"}
    assert admin_client.post("/admin/proxy/modelroute/add/", {**base, "name": "claude-sonnet", "aliases": ""}).status_code == 302
    form = admin_client.get("/admin/proxy/modelroute/add/").content.decode()
    for heading in ("Retries", "Fallbacks", "Response cache"):
        assert f">{heading}</h2>" in form
    for field in ("max_attempts", "retry_budget_seconds", "fallbacks", "context_window_fallbacks", "cache_enabled",
                  "cache_ttl_seconds", "cache_shared", "cache_per_user", "cache_sampled", "cache_cost"):
        assert f'name="{field}"' in form
    for itself in ("gpt-4o", "default", "Proxy/default"):
        refused = admin_client.post("/admin/proxy/modelroute/add/", {**base, "fallbacks": f"claude-sonnet, {itself}"})
        assert refused.status_code == 200 and "A route cannot fall back to itself" in refused.content.decode()
    unknown = admin_client.post("/admin/proxy/modelroute/add/", {**base, "context_window_fallbacks": "nonesuch"})
    assert unknown.status_code == 200 and "No route answers to nonesuch." in unknown.content.decode()
    saved = admin_client.post("/admin/proxy/modelroute/add/", {
        **base, "max_attempts": "5", "retry_budget_seconds": "12", "fallbacks": "claude-sonnet",
        "context_window_fallbacks": "claude-sonnet", "cache_enabled": "on", "cache_ttl_seconds": "60",
        "cache_cost": "full"})
    assert saved.status_code == 302
    route = ModelRoute.objects.get(name="gpt-4o")
    assert (route.max_attempts, route.retry_budget_seconds, route.fallbacks, route.context_window_fallbacks) == (
        5, 12, ["claude-sonnet"], ["claude-sonnet"])
    assert (route.cache_enabled, route.cache_ttl_seconds, route.cache_cost) == (True, 60, "full")
    # Saved again under its own name, it is still not a fallback of itself.
    again = admin_client.post(f"/admin/proxy/modelroute/{route.pk}/change/", {**base, "name": "gpt-4-renamed",
                                                                                "fallbacks": "gpt-4o"})
    assert again.status_code == 200 and "A route cannot fall back to itself" in again.content.decode()


def test_ledger_changelist_never_counts_the_whole_table(admin_client: Client, alice: Party) -> None:
    UsageRecord.objects.bulk_create(
        UsageRecord(tenant=alice.tenant, key=alice.key, endpoint="chat", public_model="demo", end_reason="complete",
                    status_code=200, prompt_tokens=i, completion_tokens=i)
        for i in range(250)
    )
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get("/admin/billing/usagerecord/")
    assert page.status_code == 200
    ledger = connection.ops.quote_name(UsageRecord._meta.db_table)
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper() and ledger in q["sql"]]
    assert counts == []
    assert admin_client.get("/admin/billing/usagerecord/", {"p": "2"}).status_code == 200
    assert admin_client.get("/admin/billing/usagerecord/add/").status_code == 403
    filtered = admin_client.get("/admin/billing/usagerecord/", {"end_reason": "complete", "q": "alice"})
    assert filtered.status_code == 200


def test_ledger_date_drilldown_matches_djangos_without_scanning(admin_client: Client, alice: Party) -> None:
    from datetime import datetime, timezone as dt_timezone

    from django.db.models import QuerySet

    moments = [datetime(2025, 12, 31, 23, 59, tzinfo=dt_timezone.utc), datetime(2026, 1, 1, tzinfo=dt_timezone.utc),
               datetime(2026, 1, 15, 12, tzinfo=dt_timezone.utc), datetime(2026, 3, 2, tzinfo=dt_timezone.utc)]
    UsageRecord.objects.bulk_create(
        UsageRecord(tenant=alice.tenant, endpoint="chat", end_reason="complete", status_code=200, created_at=moment)
        for moment in moments
    )
    rows = UsageRecord.objects.all()
    for kind in ("year", "month", "day"):
        assert rows.datetimes("created_at", kind) == list(QuerySet.datetimes(rows, "created_at", kind))
        assert rows.datetimes("created_at", kind, "DESC") == list(QuerySet.datetimes(rows, "created_at", kind, "DESC"))
    january = rows.filter(created_at__year=2026, created_at__month=1)
    assert january.datetimes("created_at", "day") == list(QuerySet.datetimes(january, "created_at", "day"))
    page = admin_client.get("/admin/billing/usagerecord/", {"created_at__year": "2026"}).content.decode()
    assert "January" in page and "March" in page and "February" not in page


def test_ledger_search_goes_by_request_id_key_or_tenant(admin_client: Client, alice: Party, bob: Party) -> None:
    mine = UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", end_reason="complete", status_code=200)
    UsageRecord.objects.create(tenant=bob.tenant, key=bob.key, endpoint="chat", end_reason="complete", status_code=200)

    def found(term: str) -> set[int]:
        response = admin_client.get("/admin/billing/usagerecord/", {"q": term})
        return {row.pk for row in response.context["cl"].result_list}

    assert found(str(mine.request_id)) == {mine.pk}
    assert found(alice.key.prefix) == found(alice.secret) == found("alice") == {mine.pk}
    assert found("nobody") == set() and found("tg-0123456789ab") == set()


def test_azure_and_bedrock_providers_from_the_admin(admin_client: Client) -> None:
    form = admin_client.get("/admin/proxy/provider/add/").content.decode()
    assert 'name="api_version"' in form and 'name="region"' in form and "ACCESS_KEY_ID:SECRET_ACCESS_KEY" in form
    missing = admin_client.post("/admin/proxy/provider/add/", provider_form(name="az", kind="azure", preset=""))
    assert missing.status_code == 200 and "resource&#x27;s endpoint" in missing.content.decode()
    admin_client.post("/admin/proxy/provider/add/", provider_form(
        name="az", kind="azure", preset="", base_url="https://contoso.openai.azure.com", api_version="2024-10-21"))
    assert Provider.objects.get(name="az").quirks()["api_version"] == "2024-10-21"
    no_region = admin_client.post("/admin/proxy/provider/add/", provider_form(name="aws", kind="bedrock", preset=""))
    assert no_region.status_code == 200 and "Give the AWS region" in no_region.content.decode()
    admin_client.post("/admin/proxy/provider/add/", provider_form(name="aws", kind="bedrock", preset="",
                                                                  region="us-east-1", api_key="AKID:SECRET"))
    assert Provider.objects.get(name="aws").resolved_base_url() == "https://bedrock-runtime.us-east-1.amazonaws.com"
    # A setting of another kind is refused with a reason, not silently ignored.
    odd = admin_client.post("/admin/proxy/provider/add/", provider_form(name="odd", region="us-east-1",
                                                                        api_version="2024-10-21"))
    page = odd.content.decode()
    assert odd.status_code == 200 and "Only AWS Bedrock providers take a region" in page
    assert "Only Azure OpenAI providers take an api-version" in page and not Provider.objects.filter(name="odd").exists()
