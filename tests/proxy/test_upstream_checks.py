"""The ops console's checks on upstreams: "Test connection" on a provider and a deployment, and the circuit breaker
column and reset action on deployments."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import Client

from billing.models import UsageRecord
from proxy import breaker, probe
from proxy.models import Deployment, Provider

from ..factories import make_route

UPSTREAM_KEY = "sk-probe-very-secret-0123456789"


def deployment_on(url: str, upstream_model: str, *, route: str = "probe-me", provider: str = "probed") -> Deployment:
    make_route(route, upstream_model=upstream_model, base_url=url, provider_name=provider)
    stored = Provider.objects.get(name=provider)
    stored.set_credential(UPSTREAM_KEY)
    stored.save()
    return Deployment.objects.get(route__name=route, upstream_model=upstream_model)


def checked(admin_client: Client, path: str) -> str:
    response = admin_client.post(path, follow=True)
    assert response.status_code == 200
    page: str = response.content.decode()
    assert UPSTREAM_KEY not in page
    return page


def test_a_deployment_answers_with_status_latency_model_and_first_words(admin_client: Client,
                                                                          mock_upstream_url: str) -> None:
    deployment = deployment_on(f"{mock_upstream_url}/v1", "mock")
    change = admin_client.get(f"/admin/proxy/deployment/{deployment.pk}/change/").content.decode()
    assert "Test connection" in change and f"/admin/proxy/deployment/{deployment.pk}/test-connection/" in change
    page = checked(admin_client, f"/admin/proxy/deployment/{deployment.pk}/test-connection/")
    assert "OK: HTTP 200 in " in page and " ms; model mock: Hello from the mock." in page
    assert "no ledger row, no budget" in page
    assert not UsageRecord.objects.exists()  # an operator's check, not usage


def test_a_failing_deployment_shows_the_status_and_the_providers_message_never_the_key(
        admin_client: Client, mock_upstream_url: str) -> None:
    deployment = deployment_on(f"{mock_upstream_url}/v1", "mock-401")
    page = checked(admin_client, f"/admin/proxy/deployment/{deployment.pk}/test-connection/")
    assert "HTTP 401 from probed in " in page and "failure (mock_failure)" in page
    assert breaker.get().state(deployment.pk) == breaker.CLOSED  # a check does not count for the breaker


def test_the_action_on_the_list_tests_each_chosen_deployment(admin_client: Client, mock_upstream_url: str) -> None:
    good = deployment_on(f"{mock_upstream_url}/v1", "mock")
    bad = deployment_on(f"{mock_upstream_url}/v1", "mock-503", route="probe-me-too")
    response = admin_client.post("/admin/proxy/deployment/", {"action": "test_connection",
                                                              "_selected_action": [good.pk, bad.pk]}, follow=True)
    page = response.content.decode()
    assert "OK: HTTP 200" in page and "HTTP 503 from probed" in page and UPSTREAM_KEY not in page


def test_a_provider_lists_its_models_or_says_why_not(admin_client: Client, mock_upstream_url: str) -> None:
    deployment = deployment_on(f"{mock_upstream_url}/v1", "mock")
    page = checked(admin_client, f"/admin/proxy/provider/{deployment.provider_id}/test-connection/")
    assert "Probed: OK: HTTP 200 in " in page  # the admin capitalises messages
    unreachable = deployment_on("http://127.0.0.1:9/v1", "gpt-4o", route="nowhere", provider="unreachable")
    page = checked(admin_client, f"/admin/proxy/provider/{unreachable.provider_id}/test-connection/")
    assert "Unreachable: Could not reach http://127.0.0.1:9: ConnectError" in page
    change = admin_client.get(f"/admin/proxy/provider/{unreachable.provider_id}/change/").content.decode()
    assert "Test connection" in change and UPSTREAM_KEY not in change


def test_the_check_takes_post_only(admin_client: Client, mock_upstream_url: str) -> None:
    deployment = deployment_on(f"{mock_upstream_url}/v1", "mock")
    assert admin_client.get(f"/admin/proxy/deployment/{deployment.pk}/test-connection/").status_code == 405
    assert admin_client.post("/admin/proxy/deployment/999999/test-connection/").status_code == 404


def test_the_demo_provider_answers_in_process(admin_client: Client, demo: Any) -> None:
    deployment = Deployment.objects.get(route=demo)
    page = checked(admin_client, f"/admin/proxy/deployment/{deployment.pk}/test-connection/")
    assert "OK in " in page and "from the built-in model" in page


def test_an_echoed_credential_is_masked_whole_or_in_part() -> None:
    said = f"Incorrect API key provided: {UPSTREAM_KEY}. Also seen as {UPSTREAM_KEY[:14]}***{UPSTREAM_KEY[-4:]}."
    masked = probe.mask(said, UPSTREAM_KEY)
    assert UPSTREAM_KEY not in masked and UPSTREAM_KEY[:14] not in masked
    assert masked.startswith("Incorrect API key provided: ***.")
    assert probe.mask("model gpt-4o-mini is not found", UPSTREAM_KEY) == "model gpt-4o-mini is not found"


def trip(deployment_id: int) -> None:
    async def fail() -> None:
        circuit = breaker.get()
        for _ in range(settings.TOLLGATE_BREAKER_FAILURES):
            circuit.report(deployment_id, ok=False)
        await circuit.drain()

    async_to_sync(fail)()


def test_the_deployment_list_shows_the_breaker_and_the_reset_action_closes_it(admin_client: Client,
                                                                              mock_upstream_url: str) -> None:
    deployment = deployment_on(f"{mock_upstream_url}/v1", "mock-500")
    listing = admin_client.get("/admin/proxy/deployment/").content.decode()
    assert "circuit breaker" in listing and ">closed" in listing
    trip(deployment.pk)
    try:
        listing = admin_client.get("/admin/proxy/deployment/").content.decode()
        failures = settings.TOLLGATE_BREAKER_FAILURES
        assert f"open: {failures} failures, half-open at " in listing
        change = admin_client.get(f"/admin/proxy/deployment/{deployment.pk}/change/").content.decode()
        assert f"open: {failures} failures" in change
        response = admin_client.post("/admin/proxy/deployment/", {"action": "reset_circuit_breaker",
                                                                  "_selected_action": [deployment.pk]}, follow=True)
        page = response.content.decode()
        assert "Circuit breaker reset for 1 deployment(s)" in page and ">closed" in page
        assert breaker.get().is_healthy(deployment.pk)
        assert breaker.statuses([deployment.pk])[0][deployment.pk].state == breaker.CLOSED
    finally:
        breaker.reset(deployment.pk)


@pytest.mark.needs_redis
def test_the_list_reads_the_fleets_breaker_from_redis(admin_client: Client, mock_upstream_url: str) -> None:
    deployment = deployment_on(f"{mock_upstream_url}/v1", "mock-500")
    elsewhere = breaker.Breaker(settings.TOLLGATE_MONEY_REDIS_URL)  # another process trips it

    async def fail() -> None:
        for _ in range(settings.TOLLGATE_BREAKER_FAILURES):
            elsewhere.report(deployment.pk, ok=False)
        await elsewhere.drain()

    async_to_sync(fail)()
    try:
        listing = admin_client.get("/admin/proxy/deployment/").content.decode()
        assert "open: " in listing and "(this process)" not in listing
    finally:
        breaker.reset(deployment.pk)


def test_with_redis_unreachable_the_admin_shows_this_processs_breakers_and_resets_them(
        admin_client: Client, mock_upstream_url: str, settings: Any) -> None:
    from ..live import free_port

    settings.TOLLGATE_MONEY_REDIS_URL = f"redis://127.0.0.1:{free_port()}/2"  # nothing listens there
    breaker.reset_breaker()
    breaker._clients.clear()
    deployment = deployment_on(f"{mock_upstream_url}/v1", "mock-500")
    for _ in range(settings.TOLLGATE_BREAKER_FAILURES):
        breaker.get().report(deployment.pk, ok=False)  # no event loop: decided in this process alone
    try:
        listing = admin_client.get("/admin/proxy/deployment/")
        assert listing.status_code == 200 and "failures, half-open at" in listing.content.decode()
        assert "(this process)" in listing.content.decode()
        response = admin_client.post("/admin/proxy/deployment/", {"action": "reset_circuit_breaker",
                                                                  "_selected_action": [deployment.pk]}, follow=True)
        assert response.status_code == 200 and "reset in this process only" in response.content.decode()
        assert breaker.get().state(deployment.pk) == breaker.CLOSED
    finally:
        breaker.reset_breaker()
        breaker._clients.clear()
