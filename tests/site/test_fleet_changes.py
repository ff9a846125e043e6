"""Two live Tollgate processes on one PostgreSQL and one Redis: a change made through one place (this test process,
or process A's management API) reaches process B within a second, for every kind of cached state.

Both processes keep the production cache times (routes, budgets and prices 10 s, key records 5 s locally and 30 s
in the shared cache), so only the change announcements can make B see a change in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import httpx
import pytest
from django.db import connection

from accounts import services
from billing.models import Budget, Price, UsageRecord
from proxy.models import Deployment

from ..conftest import Party, make_party
from ..factories import make_route
from ..live import tollgate_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.needs_postgres, pytest.mark.needs_redis]

PRODUCTION = {"TOLLGATE_ROUTES_CACHE_SECONDS": "10", "TOLLGATE_KEY_LOCAL_CACHE_SECONDS": "5"}
WITHIN = 1.0


@pytest.fixture(scope="module")
def fleet(django_db_setup: None, mock_upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Processes A and B, shared by the tests of this file (each test commits its own rows, flushed after it)."""
    name = connection.settings_dict["NAME"]
    logs = tmp_path_factory.mktemp("fleet")
    with tollgate_server(name, logs / "a.log", **PRODUCTION) as a, tollgate_server(name, logs / "b.log", **PRODUCTION) as b:
        yield a, b


@pytest.fixture
def alice(transactional_db: None, mock_upstream_url: str) -> Party:
    party = make_party("alice")
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    return party


def chat(url: str, party: Party, model: str = "mock") -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers=party.auth, timeout=10,
                      json={"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})


def within_a_second(seen: Callable[[], bool]) -> float:
    """When (seconds after now) the first request that saw the change started: every request started more than a
    second after the change must see it, however long a request takes on a busy machine."""
    started = time.monotonic()
    while True:
        sent = time.monotonic() - started
        if seen():
            return sent
        assert sent < WITHIN, f"a request sent {sent:.2f} s after the change did not see it"
        time.sleep(0.05)


def test_a_new_route_and_a_deactivated_deployment_reach_the_other_process(
        fleet: tuple[str, str], alice: Party, mock_upstream_url: str) -> None:
    _, b = fleet
    assert chat(b, alice).status_code == 200  # B holds a routing table without "fresh"
    assert chat(b, alice, "fresh").status_code == 404
    make_route("fresh", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    within_a_second(lambda: chat(b, alice, "fresh").status_code == 200)

    deployment = Deployment.objects.get(route__name="fresh")
    deployment.is_active = False
    deployment.save()
    within_a_second(lambda: chat(b, alice, "fresh").status_code == 404)


def test_a_new_price_prices_the_other_process_rows(fleet: tuple[str, str], alice: Party) -> None:
    _, b = fleet
    price = Price.objects.create(model="mock", input_per_million=Decimal("1"), output_per_million=Decimal("1"))

    def cost_per_token(response: httpx.Response) -> int:
        assert response.status_code == 200, response.text
        rows = UsageRecord.objects.filter(request_id=response.headers["x-request-id"])
        deadline = time.monotonic() + 5
        while not rows.exists():
            assert time.monotonic() < deadline, "no ledger row"
            time.sleep(0.02)
        row = rows.get()
        return row.cost_picos // (row.prompt_tokens + row.completion_tokens)

    within_a_second(lambda: cost_per_token(chat(b, alice)) == 10**6)  # $1 per million tokens, B's table warm
    price.input_per_million = price.output_per_million = Decimal("1000")
    price.save()
    within_a_second(lambda: cost_per_token(chat(b, alice)) == 1000 * 10**6)


def test_a_new_hard_budget_refuses_on_the_other_process(fleet: tuple[str, str], alice: Party) -> None:
    _, b = fleet
    Price.objects.create(model="mock", input_per_million=Decimal("1000"), output_per_million=Decimal("1000"))
    assert chat(b, alice).status_code == 200  # B holds a budget table with no budget for alice
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("0.000001"), period="month", hard=True)
    within_a_second(lambda: chat(b, alice).status_code in (400, 429))
    assert "budget" in chat(b, alice).json()["error"]["message"].lower()


def test_a_key_revoked_through_one_process_is_refused_by_the_other(fleet: tuple[str, str], alice: Party) -> None:
    a, b = fleet
    assert chat(b, alice).status_code == 200  # B holds the key's record
    _, token = services.issue_management_token(user=alice.user, name="ops")
    revoked = httpx.post(f"{a}/api/keys/{alice.key.pk}/revoke/", headers={"Authorization": f"Bearer {token}"},
                         timeout=10)
    assert revoked.status_code == 200, revoked.text
    within_a_second(lambda: chat(b, alice).status_code == 401)


def test_a_deactivated_tenant_is_refused_by_the_other_process(fleet: tuple[str, str], alice: Party) -> None:
    _, b = fleet
    assert chat(b, alice).status_code == 200
    alice.tenant.is_active = False
    alice.tenant.save()
    within_a_second(lambda: chat(b, alice).status_code in (401, 403))


def test_a_narrowed_tenant_model_list_reaches_the_other_process(
        fleet: tuple[str, str], alice: Party, mock_upstream_url: str) -> None:
    _, b = fleet
    make_route("other", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    assert chat(b, alice, "other").status_code == 200
    alice.tenant.allowed_models = ["mock"]
    alice.tenant.save()
    within_a_second(lambda: chat(b, alice, "other").status_code == 403)
    assert chat(b, alice).status_code == 200
