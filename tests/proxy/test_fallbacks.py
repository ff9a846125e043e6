"""Fallback chains, in process against the mock upstream: what serves, what the row says, what is held and billed."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client, override_settings

from billing import budgets
from billing.models import Budget, Price, UsageRecord
from proxy import retries, routing
from proxy.models import ModelRoute

from ..conftest import Party
from ..factories import make_key
from .retrying import Clock, chat, clock, deploy, flaky, healthy, row_of  # noqa: F401 (fixtures)


@pytest.fixture
def chain(mock_upstream_url: str) -> dict[str, ModelRoute]:
    """primary always fails; backup and big answer. primary falls back to backup, or to big for a long prompt."""
    return {
        "backup": deploy(mock_upstream_url, "backup", "mock"),
        "big": deploy(mock_upstream_url, "big", "mock"),
        "primary": deploy(mock_upstream_url, "primary", "mock-500", "mock-503", max_attempts=2,
                          fallbacks=["nowhere", "primary", "backup"], context_window_fallbacks=["big"]),
    }


def test_a_fallback_serves_when_every_deployment_fails(client: Client, alice: Party, chain: dict[str, ModelRoute],
                                                       clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    noted: list[dict[str, str] | None] = []

    class Journal:
        def checkpoint(self, request_id: str, text: str, *, serving: dict[str, str] | None = None) -> None:
            noted.append(serving)

    monkeypatch.setattr(retries, "journal", Journal)
    response = chat(client, alice, "primary")
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "Hello from the mock."
    row = row_of(response)
    # The row names what served: the backup route's deployment, priced as such; the gate says why.
    assert (row.public_model, row.provider, row.upstream_model) == ("backup", "backup-0", "mock")
    assert row.gate["fallback"] == {"from": "primary", "to": "backup", "reason": "error"}
    attempts = row.gate["attempts"]
    assert [(a["route"], a["status"]) for a in attempts] == [("primary", 502), ("primary", 502), ("backup", 200)]
    assert {a["model"] for a in attempts[:2]} == {"mock-500", "mock-503"}  # both deployments, then the fallback
    assert UsageRecord.objects.count() == 1
    # Each move to another deployment is in the journal first: a process killed meanwhile bills the right one.
    assert len(noted) == 2 and noted[-1] == {"public_model": "backup", "provider": "backup-0", "upstream_model": "mock"}


def test_a_prompt_too_long_goes_to_the_context_window_fallback(
    client: Client, alice: Party, chain: dict[str, ModelRoute], mock_upstream_url: str, clock: Clock
) -> None:
    for kind, name in (("openai_compatible", "long"), ("anthropic", "long-claude")):
        deploy(mock_upstream_url, name, "mock-toolong", kind=kind, fallbacks=["backup"], context_window_fallbacks=["big"])
        response = chat(client, alice, name)
        assert response.status_code == 200, response.content
        row = row_of(response)
        assert row.public_model == "big" and row.gate["fallback"]["reason"] == "context_window"
        assert [a["error"] for a in row.gate["attempts"]] == ["context_length_exceeded", None]
        assert clock.waits == []


def test_a_prompt_too_long_without_a_context_window_fallback_is_the_providers_400(
    client: Client, alice: Party, chain: dict[str, ModelRoute], mock_upstream_url: str, clock: Clock
) -> None:
    deploy(mock_upstream_url, "long", "mock-toolong", fallbacks=["backup"])
    response = chat(client, alice, "long")
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
    row = row_of(response)
    assert row.public_model == "long" and len(row.gate["attempts"]) == 1 and "fallback" not in row.gate


def test_a_fallback_the_key_may_not_use_is_skipped(client: Client, alice: Party, chain: dict[str, ModelRoute],
                                                   clock: Clock) -> None:
    _, secret = make_key(alice.tenant, name="primary only", allowed_models=["primary"])
    limited = Party(alice.tenant, alice.user, alice.key, secret)
    response = chat(client, limited, "primary")
    assert response.status_code == 502
    row = row_of(response)
    assert {a["route"] for a in row.gate["attempts"]} == {"primary"} and row.public_model == "primary"
    # A key allowed both: the backup serves.
    _, both = make_key(alice.tenant, name="both", allowed_models=["primary", "backup"])
    assert chat(client, Party(alice.tenant, alice.user, alice.key, both), "primary").status_code == 200


def test_the_row_is_priced_by_what_served_and_the_budget_equals_the_ledger(
    client: Client, alice: Party, chain: dict[str, ModelRoute], clock: Clock
) -> None:
    Price.objects.create(model="primary", input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    Price.objects.create(model="backup", input_per_million=Decimal("30"), output_per_million=Decimal("60"))
    budget = Budget.objects.create(tenant=alice.tenant, amount=Decimal("10"), period="day")
    response = chat(client, alice, "primary", max_tokens=50)
    assert response.status_code == 200
    row = row_of(response)
    assert row.price is not None and row.price.model == "backup"
    assert row.cost_picos == (row.prompt_tokens * 30 + row.completion_tokens * 60) * 10**6 > 0
    state = budgets.status(budget)
    assert (state.spent_micros * 10**6, state.reserved_micros) == (row.cost_picos, 0)
    # The hold was the dearer model's worst case, and the row stayed within it.
    assert row.gate["held_micros"] >= row.cost_picos // 10**6
    assert UsageRecord.objects.filter(tenant=alice.tenant).count() == 1


def test_the_hold_covers_a_dearer_fallback(client: Client, alice: Party, mock_upstream_url: str, clock: Clock) -> None:
    deploy(mock_upstream_url, "dear", "mock")
    deploy(mock_upstream_url, "cheap", flaky(500, times=10), max_attempts=1)
    Price.objects.create(model="cheap", input_per_million=Decimal("1"), output_per_million=Decimal("1"))
    Price.objects.create(model="dear", input_per_million=Decimal("100"), output_per_million=Decimal("100"))
    # Room for the cheap model's worst case (~0.1 milli-dollar at 100 tokens), not for the dear one's (~10).
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.005"), period="day")
    response = chat(client, alice, "cheap", max_tokens=100)
    assert response.status_code == 502  # admitted at the cheap price: it fails, with no fallback to reach
    ModelRoute.objects.filter(name="cheap").update(fallbacks=["dear"])
    routing.invalidate()
    response = chat(client, alice, "cheap", max_tokens=100)
    assert response.status_code == 429 and response.json()["error"]["code"] == "insufficient_quota"
    assert UsageRecord.objects.filter(public_model="dear").count() == 0  # the dear model was never reached


def test_a_fallback_without_a_price_is_skipped_where_unpriced_models_are_denied(
    client: Client, alice: Party, mock_upstream_url: str, clock: Clock
) -> None:
    deploy(mock_upstream_url, "unpriced", "mock")
    deploy(mock_upstream_url, "priced", flaky(500, times=10), max_attempts=1, fallbacks=["unpriced"])
    Price.objects.create(model="priced", input_per_million=Decimal("1"), output_per_million=Decimal("1"))
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("5"), period="day")
    with override_settings(TOLLGATE_UNPRICED="deny"):
        denied = chat(client, alice, "priced", max_tokens=10)
    assert denied.status_code == 502 and {a["route"] for a in row_of(denied).gate["attempts"]} == {"priced"}
    # Where unpriced models are allowed, the fallback serves as an unpriced request would.
    allowed = chat(client, alice, "priced", max_tokens=10)
    row = row_of(allowed)
    assert allowed.status_code == 200 and (row.public_model, row.price, row.cost_picos) == ("unpriced", None, 0)
    assert "unpriced" not in row.gate  # the model asked for has a price


def test_planning_fallbacks_asks_no_health_of_them(client: Client, alice: Party, mock_upstream_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Asking a half-open breaker lets its one probe through: the gate's plan must not spend it on a fallback that
    # the request then never reaches.
    backup = deploy(mock_upstream_url, "spare", "mock")
    deploy(mock_upstream_url, "healthy", "mock", fallbacks=["spare"])
    Price.objects.create(model="healthy", input_per_million=Decimal("1"), output_per_million=Decimal("1"))
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("5"), period="day")  # the gate plans the fallbacks
    asked: list[int] = []
    monkeypatch.setattr(routing, "is_healthy", lambda deployment_id: asked.append(deployment_id) or True)
    response = chat(client, alice, "healthy")
    assert response.status_code == 200 and row_of(response).gate["held_micros"] > 0
    assert asked and backup.deployments.get().pk not in asked
