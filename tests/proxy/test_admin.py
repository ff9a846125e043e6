from __future__ import annotations

import logging

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing.models import UsageRecord
from proxy import routing
from proxy.models import Provider

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
