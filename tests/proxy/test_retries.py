"""Retries before the first byte, in process against the mock upstream, with a fake clock (no test sleeps)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client, override_settings
from openai import OpenAI

from bench import mock_upstream
from billing.models import UsageRecord
from proxy import retries, routing
from proxy.errors import ProviderError
from proxy.providers.base import Target
from proxy.routing import Group

from ..conftest import Party, make_party
from .retrying import Clock, chat, clock, deploy, flaky, healthy, row_of, stream  # noqa: F401 (fixtures)


def rate_limited(**hints: str) -> ProviderError:
    return ProviderError("busy", status=429, code="upstream_rate_limited", permanent=False, **hints)


@override_settings(TOLLGATE_RETRY_BACKOFF_MS=250, TOLLGATE_RETRY_BACKOFF_MAX_MS=1000)
def test_backoff_is_full_jitter_under_a_doubling_bound_and_the_cap() -> None:
    random.seed(15)
    for retry, bound in ((1, 0.25), (2, 0.5), (3, 1.0), (4, 1.0), (10, 1.0), (30_000, 1.0)):
        waits = [retries.backoff(retry) for _ in range(500)]
        assert all(0 <= wait <= bound for wait in waits)
        assert min(waits) < bound * 0.1 and max(waits) > bound * 0.9  # jitter over the whole range


def test_provider_hints_win_over_the_backoff_ms_first() -> None:
    assert retries.hinted(rate_limited(retry_after_ms="1500")) == 1.5
    assert retries.hinted(rate_limited(retry_after="2")) == 2.0
    assert retries.hinted(rate_limited(retry_after="7", retry_after_ms="250")) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retries.hinted(rate_limited(retry_after=date)) <= 30  # type: ignore[operator]
    assert retries.hinted(rate_limited(retry_after="soon")) is None and retries.hinted(rate_limited()) is None
    assert retries.delay(rate_limited(retry_after="2"), 5) == 2.0


def target(deployment_id: int) -> Target:
    return Target(public_model="m", deployment_id=deployment_id, provider_name="p", kind="openai_compatible",
                  base_url="", upstream_model="u")


def test_health_is_asked_only_of_the_deployment_chosen(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    # Asking a half-open breaker lets its one probe through: asking of a deployment then not tried would waste it.
    asked: list[int] = []
    benched = {2, 3}
    monkeypatch.setattr(routing, "is_healthy", lambda d: asked.append(d) or d not in benched)
    group = Group("m", (target(1), target(2), target(3), target(4)), attempts=4, budget_seconds=30.0)
    error = rate_limited(retry_after_ms="100")
    assert retries.next_step(group, target(1), error, {1: 1}, clock.now()) == (target(4), 0.0)
    assert asked == [2, 3, 4]  # one attempt kept for each deployment not yet tried: no retry of 1 yet
    asked.clear()
    # With attempts to spare, the same deployment is retried first.
    roomy = Group("m", group.targets, attempts=9, budget_seconds=30.0)
    assert retries.next_step(roomy, target(1), error, {1: 1}, clock.now()) == (target(1), 0.1)
    assert asked == [1]
    asked.clear()
    # The others benched: the failed deployment after all, rather than giving up.
    assert retries.next_step(Group("m", group.targets[:3], 3, 30.0), target(1), error, {1: 1}, clock.now()) == (
        target(1), 0.1)
    assert asked == [2, 3, 1]


def test_a_client_leaving_during_a_backoff_ends_the_request_with_its_row(
    alice: Party, mock_upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = flaky(429, times=5, retry_after_ms=1000)
    deploy(mock_upstream_url, "left", model)

    async def client_leaves(seconds: float) -> None:
        raise asyncio.CancelledError  # what Django raises in the request task when the client disconnects

    monkeypatch.setattr(retries, "sleep", client_leaves)

    async def request() -> str:
        try:
            await AsyncClient().post("/v1/chat/completions", json.dumps({"model": "left", "messages": [
                {"role": "user", "content": "Hi"}]}), content_type="application/json", headers=alice.auth)
        except asyncio.CancelledError:
            return "cancelled"
        return "answered"

    assert async_to_sync(request)() == "cancelled"
    [row] = UsageRecord.objects.filter(tenant=alice.tenant)
    assert (row.end_reason, row.status_code) == ("client_gone", 499) and mock_upstream.flaky[model] == 1
    assert [a["status"] for a in row.gate["attempts"]] == [429]


def test_a_first_attempt_that_succeeds_records_no_attempts(client: Client, alice: Party, mock_upstream_url: str,
                                                           clock: Clock) -> None:
    deploy(mock_upstream_url, "plain", "mock")
    response = chat(client, alice, "plain")
    assert response.status_code == 200 and "attempts" not in row_of(response).gate and clock.waits == []


@override_settings(TOLLGATE_RETRY_BACKOFF_MS=250, TOLLGATE_RETRY_BACKOFF_MAX_MS=8000)
def test_transient_errors_are_retried_on_the_same_deployment_with_backoff(
    client: Client, alice: Party, mock_upstream_url: str, clock: Clock
) -> None:
    model = flaky(503, times=2)
    deploy(mock_upstream_url, "wobbly", model)
    response = chat(client, alice, "wobbly")
    assert response.status_code == 200 and mock_upstream.flaky[model] == 3
    assert len(clock.waits) == 2 and 0 <= clock.waits[0] <= 0.25 and 0 <= clock.waits[1] <= 0.5
    row = row_of(response)
    attempts = row.gate["attempts"]
    assert [(a["status"], a["error"]) for a in attempts] == [(502, "upstream_error"), (502, "upstream_error"), (200, None)]
    assert [a["waited_ms"] for a in attempts] == [0, round(clock.waits[0] * 1000), round(clock.waits[1] * 1000)]
    assert {a["deployment"] for a in attempts} == {row.gate["attempts"][0]["deployment"]}
    assert (row.status_code, row.end_reason, row.upstream_model) == (200, "complete", model)


def test_retry_after_ms_and_retry_after_are_honoured(client: Client, alice: Party, mock_upstream_url: str,
                                                     clock: Clock) -> None:
    deploy(mock_upstream_url, "hinted-ms", flaky(429, retry_after_ms=1500))
    deploy(mock_upstream_url, "hinted-s", flaky(429, retry_after=2))
    assert chat(client, alice, "hinted-ms").status_code == 200
    assert chat(client, alice, "hinted-s").status_code == 200
    assert clock.waits == [1.5, 2.0]


def test_attempts_stop_at_the_routes_cap_and_the_last_error_is_returned(
    client: Client, alice: Party, mock_upstream_url: str, clock: Clock
) -> None:
    model = flaky(429, times=10, retry_after_ms=20)
    deploy(mock_upstream_url, "capped", model, max_attempts=2)
    with override_settings(TOLLGATE_RETRY_ATTEMPTS=5):
        response = chat(client, alice, "capped")
    assert response.status_code == 429 and mock_upstream.flaky[model] == 2 and clock.waits == [0.02]
    # Tollgate gave up: the provider's hint goes on to the client, whose SDK waits that long before its own retry.
    assert response["retry-after-ms"] == "20"
    assert response.json()["error"]["type"] == "rate_limit_error"
    row = row_of(response)
    assert (row.status_code, row.error_code, len(row.gate["attempts"])) == (429, "mock_error", 2)


def test_the_global_default_applies_to_a_route_without_its_own(client: Client, alice: Party, mock_upstream_url: str,
                                                               clock: Clock) -> None:
    model = flaky(500, times=10)
    deploy(mock_upstream_url, "defaulted", model)
    with override_settings(TOLLGATE_RETRY_ATTEMPTS=4):
        assert chat(client, alice, "defaulted").status_code == 502
    assert mock_upstream.flaky[model] == 4


def test_a_wait_that_would_pass_the_time_budget_is_not_started(client: Client, alice: Party, mock_upstream_url: str,
                                                               clock: Clock) -> None:
    too_long = flaky(429, times=10, retry_after=5)
    deploy(mock_upstream_url, "patient", too_long, retry_budget_seconds=4, max_attempts=5)
    response = chat(client, alice, "patient")
    assert response.status_code == 429 and response["Retry-After"] == "5"
    assert mock_upstream.flaky[too_long] == 1 and clock.waits == []
    # Waits that fit add up: 1.5 s, then 3 s in, a third 1.5 s would end past the 4 s budget.
    adding_up = flaky(429, times=10, retry_after_ms=1500)
    deploy(mock_upstream_url, "adding-up", adding_up, retry_budget_seconds=4, max_attempts=9)
    assert chat(client, alice, "adding-up").status_code == 429
    assert mock_upstream.flaky[adding_up] == 3 and clock.waits == [1.5, 1.5]


def test_a_benched_deployment_gives_way_to_another_at_once(
    client: Client, alice: Party, mock_upstream_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    route = deploy(mock_upstream_url, "pair", "mock-500", "mock")
    first, second = route.deployments.order_by("pk")
    route.deployments.filter(pk=first.pk).update(weight=1_000_000)  # tried first
    benched: set[int] = set()
    monkeypatch.setattr(routing, "is_healthy", lambda deployment_id: deployment_id not in benched)
    monkeypatch.setattr(routing, "report", lambda target, *, ok: ok or benched.add(target.deployment_id))
    response = chat(client, alice, "pair")
    assert response.status_code == 200 and clock.waits == []
    row = row_of(response)
    assert [a["deployment"] for a in row.gate["attempts"]] == [first.pk, second.pk]
    assert (row.provider, row.upstream_model) == ("pair-1", "mock")


def test_a_deployment_that_refuses_the_key_is_not_retried(client: Client, alice: Party, mock_upstream_url: str,
                                                          clock: Clock) -> None:
    route = deploy(mock_upstream_url, "keys", "mock-401", "mock")
    first, second = route.deployments.order_by("pk")
    route.deployments.filter(pk=first.pk).update(weight=1_000_000)
    response = chat(client, alice, "keys")
    assert response.status_code == 200 and clock.waits == []
    assert [a["deployment"] for a in row_of(response).gate["attempts"]] == [first.pk, second.pk]


def test_a_request_error_is_not_retried(client: Client, alice: Party, mock_upstream_url: str, clock: Clock) -> None:
    deploy(mock_upstream_url, "invalid", "mock-400")
    response = chat(client, alice, "invalid")
    assert response.status_code == 400 and len(row_of(response).gate["attempts"]) == 1


def test_a_stream_cut_after_its_first_byte_is_not_retried(client: Client, alice: Party, mock_upstream_url: str,
                                                          clock: Clock) -> None:
    route = deploy(mock_upstream_url, "cut", "mock-cut", "mock")
    route.deployments.filter(upstream_model="mock-cut").update(weight=1_000_000)  # tried first; "mock" never is
    before = len(mock_upstream.peers)
    response, body = stream(alice, "cut")
    assert response.status_code == 200 and '"code": "upstream_cut"' in body and "[DONE]" not in body
    row = UsageRecord.objects.get(request_id=response["x-request-id"])
    assert row.end_reason == "upstream_cut" and "attempts" not in row.gate
    assert len(mock_upstream.peers) - before == 1


def test_only_opening_a_stream_is_retried(client: Client, alice: Party, mock_upstream_url: str, clock: Clock) -> None:
    model = flaky(503, times=1)
    deploy(mock_upstream_url, "reopened", model)
    response, body = stream(alice, "reopened")
    assert response.status_code == 200 and body.endswith("data: [DONE]\n\n")
    assert [a["status"] for a in row_of(response).gate["attempts"]] == [502, 200]


@pytest.mark.django_db(transaction=True)
def test_the_openai_sdk_gets_a_200_when_tollgate_retries_a_429(live_server_url: str, mock_upstream_url: str) -> None:
    party = make_party("carol")
    model = flaky(429, times=1, retry_after_ms=10)
    deploy(mock_upstream_url, "sdk-retried", model)
    client = OpenAI(base_url=f"{live_server_url}/v1", api_key=party.secret, max_retries=0)  # every retry is Tollgate's
    answer = client.chat.completions.with_raw_response.create(
        model="sdk-retried", messages=[{"role": "user", "content": "Say hello"}])
    assert answer.status_code == 200 and answer.parse().choices[0].message.content == "Hello from the mock."
    assert mock_upstream.flaky[model] == 2
    deadline = time.monotonic() + 3
    while not (rows := list(UsageRecord.objects.filter(request_id=answer.headers["x-request-id"]))):
        assert time.monotonic() < deadline, "no usage row"
        time.sleep(0.02)
    [row] = rows
    assert [a["status"] for a in row.gate["attempts"]] == [429, 200] and row.gate["attempts"][1]["waited_ms"] == 10
