from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from proxy import breaker, routing
from proxy.providers.base import Target
from proxy.routing import Choice


def choice(deployment_id: int, weight: int) -> Choice:
    target = Target(public_model="m", deployment_id=deployment_id, provider_name="p", kind="demo", base_url="",
                    upstream_model=f"u{deployment_id}")
    return Choice(target=target, weight=weight)


@pytest.fixture(autouse=True)
def clean_health(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    settings.TOLLGATE_BREAKER_FAILURES, settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS = 3, 30
    monkeypatch.setattr(breaker, "_breaker", breaker.Breaker(None))  # this process alone; tests/proxy/test_breaker.py
    random.seed(7)                                                    # covers the fleet


def test_weighted_choice_follows_the_weights() -> None:
    choices = (choice(1, 3), choice(2, 1))
    firsts = Counter(routing.order(choices)[0].deployment_id for _ in range(4000))
    assert 0.70 < firsts[1] / 4000 < 0.80
    assert {t.deployment_id for t in routing.order(choices)} == {1, 2}  # the other one is the fallback


def test_a_deployment_whose_breaker_opened_sits_out_then_gets_one_probe() -> None:
    choices = (choice(1, 100), choice(2, 1))
    for _ in range(3):
        routing.report(choices[0].target, ok=False)
    assert all(routing.order(choices)[0].deployment_id == 2 for _ in range(50))
    assert routing.order(choices)[-1].deployment_id == 1  # still the last resort
    now = breaker.get().clock()
    breaker.get().clock = lambda: now + 31
    assert routing.is_healthy(1) and not routing.is_healthy(1)  # half-open: one request probes it
    routing.report(choices[0].target, ok=True)
    assert routing.is_healthy(1) and routing.is_healthy(1)


def test_fewer_failures_than_the_threshold_keep_it_in() -> None:
    target = choice(1, 1).target
    routing.report(target, ok=False)
    routing.report(target, ok=False)
    routing.report(target, ok=True)
    assert routing.is_healthy(1)


def test_all_tripped_are_still_tried() -> None:
    choices = (choice(1, 1), choice(2, 1))
    for c in choices:
        for _ in range(3):
            routing.report(c.target, ok=False)
    assert {t.deployment_id for t in routing.order(choices)} == {1, 2}


def test_the_request_a_half_open_deployment_lets_through_goes_there_first(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deployment 1 weighs almost nothing: were the probe left to the weighted choice, it would rarely be sent, and
    # nobody would probe deployment 1 until the claim lapsed.
    choices = (choice(1, 1), choice(2, 1000))
    for _ in range(3):
        routing.report(choices[0].target, ok=False)
    now = breaker.get().clock()
    monkeypatch.setattr(breaker.get(), "clock", lambda: now + 31)  # the cool-down is over: half-open
    first = routing.order(choices)
    assert [t.deployment_id for t in first] == [1, 2]  # the one probe
    assert all(routing.order(choices)[0].deployment_id == 2 for _ in range(20))  # nobody else while it is out
