"""GET /api/usage/: rollups per UTC day or hour and per tenant, key, model and provider equal the ledger; CSV and
JSON give the same numbers; operators see every tenant and an owner only theirs; bad parameters are 400s."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.test import AsyncClient, Client

from accounts import services
from accounts.models import Membership
from billing import rollups
from billing.models import UsageRecord

from ..conftest import Party, make_party
from ..factories import make_key, make_user
from .conftest import token_client

pytestmark = pytest.mark.django_db

MIDNIGHT = datetime(2026, 11, 2, tzinfo=UTC)
NUMBERS = ("requests", "errors", "refusals", "prompt_tokens", "completion_tokens", "cost_picos")


@pytest.fixture
def traffic(alice: Party, bob: Party) -> list[UsageRecord]:
    """Rows on both sides of a UTC midnight and of an hour, over two keys, two models and two providers."""
    second, _ = make_key(alice.tenant, name="second")
    tick = timedelta(microseconds=1)
    plan = [
        (alice, alice.key, "gpt-4o", "openai", MIDNIGHT - tick, "complete", 10, 5, 1_000_000_000_001, 120),
        (alice, alice.key, "gpt-4o", "openai", MIDNIGHT, "complete", 20, 7, 2_000_000_000_003, 80),
        (alice, alice.key, "gpt-4o", "azure", MIDNIGHT + timedelta(minutes=59), "upstream_error", 3, 0, 7, 300),
        (alice, alice.key, "claude", "anthropic", MIDNIGHT + timedelta(hours=1), "complete", 40, 9, 123, 50),
        (alice, alice.key, "claude", "", MIDNIGHT + timedelta(hours=1, minutes=5), "rejected", 0, 0, 0, 1),
        (alice, second, "gpt-4o", "openai", MIDNIGHT + timedelta(hours=1), "complete", 1, 1, 999, 60),
        (bob, bob.key, "gpt-4o", "openai", MIDNIGHT + timedelta(hours=2), "complete", 100, 100, 555_555, 70),
        (bob, bob.key, "gpt-4o", "openai", MIDNIGHT - timedelta(days=1), "complete", 1, 1, 1, 70),
    ]
    rows = [UsageRecord.objects.create(tenant=party.tenant, key=key, endpoint="chat", public_model=model,
                                       provider=provider, created_at=at, end_reason=reason, prompt_tokens=prompt,
                                       completion_tokens=completion, cost_picos=cost, latency_ms=latency,
                                       status_code=429 if reason == "rejected" else 200)
            for party, key, model, provider, at, reason, prompt, completion, cost, latency in plan]
    rollups.roll_up()
    return rows


def expected(rows: list[UsageRecord], *, granularity: str, groups: tuple[str, ...]) -> dict[tuple[Any, ...], dict[str, int]]:
    """The ledger summed per bucket and group, as the report should show it."""
    sums: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: dict.fromkeys(NUMBERS, 0))
    for row in rows:
        start = row.created_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        bucket = start.replace(hour=0) if granularity == "day" else start
        named = {"tenant": row.tenant.slug, "key": row.key_id, "model": row.public_model, "provider": row.provider}
        figures = sums[(bucket.isoformat().replace("+00:00", "Z"), *(named[g] for g in groups))]
        figures["requests"] += 1
        figures["errors"] += row.end_reason in rollups.ERRORS
        figures["refusals"] += row.end_reason == "rejected"
        figures["prompt_tokens"] += row.prompt_tokens
        figures["completion_tokens"] += row.completion_tokens
        figures["cost_picos"] += row.cost_picos
    return dict(sums)


def shown(results: list[dict[str, Any]], groups: tuple[str, ...]) -> dict[tuple[Any, ...], dict[str, int]]:
    return {(r["bucket"], *(r[g] for g in groups)): {n: r[n] for n in NUMBERS} for r in results}


def report(api: Client, **query: str) -> Any:
    answer = api.get("/api/usage/", query)
    assert answer.status_code == 200, answer.content
    return answer.json()


def test_an_owner_sees_their_tenants_days_as_the_ledger_has_them(alice: Party, traffic: list[UsageRecord]) -> None:
    body = report(token_client(alice.user), start="2026-11-01", end="2026-11-02")
    groups = ("tenant", "key", "model")
    alices = [row for row in traffic if row.tenant_id == alice.tenant.pk]
    assert shown(body["results"], groups) == expected(alices, granularity="day", groups=groups)
    assert body["count"] == len(body["results"]) == 4
    first = body["results"][0]
    assert (first["bucket"], first["tenant"], first["key_prefix"]) == ("2026-11-01T00:00:00Z", "alice", alice.key.prefix)
    assert first["cost_usd"] == "1.000000000001" and first["cost_picos"] == 1_000_000_000_001
    assert first["total_tokens"] == 15


def test_hours_grouped_by_model_and_provider_and_filtered(alice: Party, traffic: list[UsageRecord]) -> None:
    api = token_client(alice.user)
    groups = ("model", "provider")
    alices = [row for row in traffic if row.tenant_id == alice.tenant.pk]
    hourly = report(api, start="2026-11-02", end="2026-11-02", granularity="hour", group_by="model,provider")
    on_the_2nd = [row for row in alices if row.created_at >= MIDNIGHT]
    assert shown(hourly["results"], groups) == expected(on_the_2nd, granularity="hour", groups=groups)
    assert "tenant" not in hourly["results"][0] and "key" not in hourly["results"][0]
    only = report(api, start="2026-11-01", end="2026-11-02", group_by="model", key=str(alice.key.pk), model="gpt-4o",
                  provider="openai")
    picked = [row for row in alices if (row.key_id, row.public_model, row.provider) == (alice.key.pk, "gpt-4o", "openai")]
    assert shown(only["results"], ("model",)) == expected(picked, granularity="day", groups=("model",))


def test_operators_see_every_tenant_and_totals_match_the_ledger(operator: Client, traffic: list[UsageRecord]) -> None:
    per_tenant = report(operator, start="2026-10-31", end="2026-11-02", group_by="tenant")
    assert {r["tenant"] for r in per_tenant["results"]} == {"alice", "bob"}
    assert shown(per_tenant["results"], ("tenant",)) == expected(traffic, granularity="day", groups=("tenant",))
    totals = report(operator, start="2026-10-31", end="2026-11-02", group_by="")
    assert shown(totals["results"], ()) == expected(traffic, granularity="day", groups=())
    assert set(totals["results"][0]) >= {"bucket", *NUMBERS, "cost_usd"} and "tenant" not in totals["results"][0]
    bobs = report(operator, start="2026-10-31", end="2026-11-02", tenant="bob")
    assert {r["tenant"] for r in bobs["results"]} == {"bob"}


def test_percentiles_are_given_only_for_a_single_rollup(alice: Party, traffic: list[UsageRecord]) -> None:
    api = token_client(alice.user)
    exact = report(api, start="2026-11-01", end="2026-11-01", group_by="tenant,key,model,provider")["results"]
    assert [(r["requests"], r["latency_p50_ms"]) for r in exact] == [(1, 120)]
    combined = report(api, start="2026-11-02", end="2026-11-02", group_by="tenant")["results"]
    assert combined[0]["requests"] == 5 and combined[0]["latency_p50_ms"] is None


def test_bob_gets_nothing_of_alices_tenant(alice: Party, bob: Party, traffic: list[UsageRecord]) -> None:
    api = token_client(bob.user)
    everything = report(api, start="2026-10-01", end="2026-11-30", group_by="tenant,key,model,provider")
    assert {r["tenant"] for r in everything["results"]} == {"bob"}
    assert alice.key.pk not in {r["key"] for r in everything["results"]}
    for query in ({"tenant": "alice"}, {"key": str(alice.key.pk)}):
        refused = api.get("/api/usage/", {"start": "2026-11-01", **query})
        assert refused.status_code == 400 and list(refused.json()) == list(query)
        assert "alice" not in refused.content.decode() and str(alice.key.prefix) not in refused.content.decode()
    csv_rows = list(csv.DictReader(io.StringIO(b"".join(api.get(
        "/api/usage/", {"start": "2026-10-01", "end": "2026-11-30", "format": "csv"}).streaming_content).decode())))
    assert {row["tenant"] for row in csv_rows} == {"bob"}
    member = make_user("alice-member", tenant=alice.tenant, role=Membership.Role.MEMBER)
    assert report(token_client(member), start="2026-11-01", end="2026-11-02")["results"] == []  # owners only, as the API


def csv_of(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200 and response.streaming and response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def as_csv(row: dict[str, Any]) -> dict[str, str]:
    return {name: "" if value is None else str(value) for name, value in row.items()}


def test_csv_and_json_give_the_same_rows(alice: Party, traffic: list[UsageRecord]) -> None:
    api = token_client(alice.user)
    query = {"start": "2026-11-01", "end": "2026-11-02", "group_by": "tenant,key,model,provider"}
    rows = report(api, **query)["results"]
    by_format = csv_of(api.get("/api/usage/", {**query, "format": "csv"}))
    by_accept = csv_of(api.get("/api/usage/", query, headers={"Accept": "text/csv"}))
    assert by_format == by_accept == [as_csv(row) for row in rows]
    assert list(by_format[0]) == list(rows[0])  # the same columns, in the same order


def test_csv_streams_under_asgi_too(alice: Party, traffic: list[UsageRecord]) -> None:
    _, token = services.issue_management_token(user=alice.user, name="asgi")

    async def fetch() -> tuple[bool, str]:
        response = await AsyncClient().get("/api/usage/", {"start": "2026-11-01", "end": "2026-11-02", "format": "csv"},
                                           headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200 and response.is_async, response.content  # type: ignore[attr-defined]
        return True, b"".join([part async for part in response.streaming_content]).decode()  # type: ignore[attr-defined]

    _, text = async_to_sync(fetch)()
    rows = list(csv.DictReader(io.StringIO(text)))
    json_rows = report(token_client(alice.user), start="2026-11-01", end="2026-11-02")["results"]
    assert rows == [as_csv(row) for row in json_rows]


def test_a_model_name_is_never_a_spreadsheet_formula(alice: Party) -> None:
    UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", public_model="=HYPERLINK(1)",
                               created_at=MIDNIGHT, end_reason="rejected", status_code=404)
    rollups.roll_up()
    rows = csv_of(token_client(alice.user).get("/api/usage/", {"start": "2026-11-02", "format": "csv",
                                                                "group_by": "model", "end": "2026-11-02"}))
    assert [row["model"] for row in rows] == ["'=HYPERLINK(1)"]


@pytest.mark.parametrize("query, field", [
    ({"start": "2026-13-01"}, "start"),
    ({"start": "2026-11-01T00:00:00"}, "start"),
    ({"end": "yesterday"}, "end"),
    ({"start": "2026-11-02", "end": "2026-11-01"}, "end"),
    ({"start": "2025-01-01", "end": "2026-11-01"}, "end"),
    ({"start": "0001-01-01", "end": "9999-12-31"}, "end"),
    ({"granularity": "week"}, "granularity"),
    ({"group_by": "tenant,colour"}, "group_by"),
    ({"format": "xml"}, "format"),
    ({"key": "abc"}, "key"),
    ({"key": "0"}, "key"),
    ({"key": str(2**70)}, "key"),
    ({"key": "999999"}, "key"),
    ({"tenant": "nobody"}, "tenant"),
    ({"tenant": "a b"}, "tenant"),
    ({"model": "gpt\x00"}, "model"),
])
def test_bad_parameters_are_400s_in_the_apis_envelope(alice: Party, query: dict[str, str], field: str) -> None:
    answer = token_client(alice.user).get("/api/usage/", query)
    assert answer.status_code == 400, answer.content
    assert answer["Content-Type"] == "application/json" and field in answer.json()


def test_signing_in_is_required(alice: Party) -> None:
    assert Client().get("/api/usage/").status_code in (401, 403)
    assert Client(headers=alice.auth).get("/api/usage/").status_code in (401, 403)  # a /v1 key is not a token
    ops = token_client(User.objects.create_user("ops2", is_staff=True))
    assert ops.get("/api/usage/").json()["results"] == []  # the last 30 days by default: nothing there


@pytest.mark.django_db(transaction=True)  # the server process must see committed rows
def test_uvicorn_streams_the_csv_with_the_json_numbers(live_server_url: str, transactional_db: None) -> None:
    alice = make_party("alice")
    for minutes in range(3):
        UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", public_model="gpt-4o",
                                   provider="openai", created_at=MIDNIGHT + timedelta(minutes=minutes),
                                   end_reason="complete", status_code=200, prompt_tokens=3, cost_picos=7)
    rollups.roll_up()
    _, token = services.issue_management_token(user=alice.user, name="live")
    query = {"start": "2026-11-02", "end": "2026-11-02", "group_by": "tenant,key,model,provider"}
    with httpx.Client(base_url=live_server_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
        page = http.get("/api/usage/", params=query)
        with http.stream("GET", "/api/usage/", params={**query, "format": "csv"}) as streamed:
            assert streamed.headers["content-type"].startswith("text/csv")
            text = "".join(streamed.iter_text())
    rows = page.json()["results"]
    assert [(r["requests"], r["prompt_tokens"], r["cost_picos"]) for r in rows] == [(3, 9, 21)]
    assert list(csv.DictReader(io.StringIO(text))) == [as_csv(row) for row in rows]
