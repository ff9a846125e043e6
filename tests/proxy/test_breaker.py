"""The circuit breaker: closed -> open -> half-open (one probe in the fleet) -> closed or open again, shared by every
process through Redis, and deciding alone when there is no Redis or it is down."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from proxy import breaker, outages
from proxy.breaker import CLOSED, HALF_OPEN, OPEN, Breaker

START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def rules(settings: Any) -> None:
    settings.TOLLGATE_BREAKER_FAILURES = 3
    settings.TOLLGATE_BREAKER_WINDOW_SECONDS = 60
    settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS = 30


def fail(b: Breaker, deployment_id: int, times: int = 1) -> None:
    for _ in range(times):
        b.report(deployment_id, ok=False)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


# --- one process, no Redis


def test_trips_after_n_failures_within_the_window() -> None:
    clock = Clock()
    b = Breaker(None, clock=clock)
    fail(b, 1, 2)
    assert b.is_healthy(1) and b.state(1) == CLOSED and b.status(1).failures == 2
    fail(b, 1)
    assert not b.is_healthy(1) and b.state(1) == OPEN
    assert b.status(1).reopens_at == START + 30 and b.trips == {1: 1}
    assert b.is_healthy(2)  # other deployments are not concerned


def test_failures_spread_beyond_the_window_do_not_trip() -> None:
    clock = Clock()
    b = Breaker(None, clock=clock)
    for _ in range(6):
        fail(b, 1)
        clock.now += 31  # two failures are never within 60 s of a third
    assert b.is_healthy(1) and b.state(1) == CLOSED


def test_successes_in_between_do_not_hide_failures() -> None:
    b = Breaker(None, clock=Clock())
    for _ in range(3):
        fail(b, 1)
        b.report(1, ok=True)
    assert b.state(1) == OPEN


def test_half_open_after_the_cool_down_lets_one_probe_through_and_its_success_closes() -> None:
    clock = Clock()
    b = Breaker(None, clock=clock)
    fail(b, 1, 3)
    clock.now += 29.9
    assert not b.is_healthy(1)
    b.report(1, ok=True)  # an answer to a request sent before the trip does not close it
    assert b.state(1) == OPEN
    clock.now += 0.2
    assert b.state(1) == HALF_OPEN
    assert [b.is_healthy(1) for _ in range(5)] == [True, False, False, False, False]  # exactly one probe
    b.report(1, ok=True)
    assert b.state(1) == CLOSED and all(b.is_healthy(1) for _ in range(5))
    fail(b, 1, 2)
    assert b.state(1) == CLOSED  # counting starts again from zero


def test_a_failed_probe_reopens_for_another_cool_down() -> None:
    clock = Clock()
    b = Breaker(None, clock=clock)
    fail(b, 1, 3)
    clock.now += 31
    assert b.is_healthy(1)
    fail(b, 1)
    assert b.state(1) == OPEN and b.status(1).reopens_at == clock.now + 30 and b.status(1).trips == 2
    assert b.trips == {1: 2}
    clock.now += 31
    assert b.is_healthy(1)  # the next probe


def test_a_probe_that_never_reports_frees_its_claim_after_a_cool_down() -> None:
    clock = Clock()
    b = Breaker(None, clock=clock)
    fail(b, 1, 3)
    clock.now += 31
    assert b.is_healthy(1) and not b.is_healthy(1)
    clock.now += 31
    assert b.is_healthy(1)


# --- the fleet: two processes (two breakers with their own mirrors) sharing one Redis


@pytest.fixture
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("needs REDIS_URL (a real Redis server)")
    yield url


@pytest.fixture
def deployment(redis_url: str) -> Iterator[int]:
    """A deployment id of its own, its Redis state removed afterwards."""
    import redis

    deployment_id = random.randrange(10**8, 10**9)
    yield deployment_id
    client = redis.Redis.from_url(redis_url)
    client.delete(*breaker.keys(deployment_id))
    client.hdel(breaker.INDEX, str(deployment_id))
    client.close()


def two(url: str, clock: Clock) -> tuple[Breaker, Breaker]:
    return Breaker(url, clock=clock), Breaker(url, clock=clock)


@pytest.mark.needs_redis
def test_failures_in_two_processes_trip_one_breaker_that_both_see(redis_url: str, deployment: int) -> None:
    async def scenario() -> None:
        clock = Clock()
        a, b = two(redis_url, clock)
        fail(a, deployment, 2)
        fail(b, deployment, 1)  # three in the fleet, though no process saw three
        await asyncio.gather(a.drain(), b.drain())
        assert b.state(deployment) == OPEN and not b.is_healthy(deployment)  # the one that tripped it: at once
        assert a.state(deployment) == CLOSED  # the other: at its next refresh, within a second (the upkeep)
        await a.refresh()
        assert a.state(deployment) == OPEN and not a.is_healthy(deployment)
        assert a.status(deployment).reopens_at == pytest.approx(START + 30)
        assert b.trips == {deployment: 1} and a.trips == {}  # counted once, by the process that tripped it

    run(scenario)


@pytest.mark.needs_redis
def test_failures_spread_beyond_the_window_in_the_fleet_do_not_trip(redis_url: str, deployment: int) -> None:
    async def scenario() -> None:
        clock = Clock()
        a, b = two(redis_url, clock)
        for process in (a, b, a, b, a):
            fail(process, deployment)
            await process.drain()
            clock.now += 31
        await asyncio.gather(a.refresh(), b.refresh())
        assert a.state(deployment) == b.state(deployment) == CLOSED

    run(scenario)


@pytest.mark.needs_redis
def test_exactly_one_probe_in_the_fleet_and_its_success_closes_everywhere(redis_url: str, deployment: int) -> None:
    async def scenario() -> None:
        clock = Clock()
        a, b = two(redis_url, clock)
        fail(a, deployment, 3)
        await a.drain()
        await b.refresh()
        clock.now += 31
        # Both processes ask; each asks Redis for the probe claim in a task, and one wins it.
        assert not a.is_healthy(deployment) and not b.is_healthy(deployment)
        await asyncio.gather(a.drain(), b.drain())
        let_through = [a.is_healthy(deployment), b.is_healthy(deployment)]
        let_through += [p.is_healthy(deployment) for p in (a, b) for _ in range(3)]
        await asyncio.gather(a.drain(), b.drain())
        assert let_through.count(True) == 1
        prober, other = (a, b) if let_through[0] else (b, a)
        prober.report(deployment, ok=True)
        assert prober.state(deployment) == CLOSED  # at once where it happened
        await prober.drain()
        await other.refresh()
        assert other.state(deployment) == CLOSED and other.is_healthy(deployment)
        statuses, source = await asyncio.to_thread(lambda: (breaker._read(redis_url, [deployment], clock()), "redis"))
        assert statuses[deployment].state == CLOSED and source == "redis"

    run(scenario)


@pytest.mark.needs_redis
def test_a_failed_probe_reopens_it_for_the_fleet(redis_url: str, deployment: int) -> None:
    async def scenario() -> None:
        clock = Clock()
        a, b = two(redis_url, clock)
        fail(a, deployment, 3)
        await a.drain()
        clock.now += 31
        a.is_healthy(deployment)
        await a.drain()
        assert a.is_healthy(deployment)  # a holds the probe
        fail(a, deployment)
        await a.drain()
        await b.refresh()
        for process in (a, b):
            assert process.state(deployment) == OPEN
            assert process.status(deployment).reopens_at == pytest.approx(clock.now + 30)
            assert process.status(deployment).trips == 2
        assert a.trips == {deployment: 2}

    run(scenario)


@pytest.mark.needs_redis
def test_a_stale_index_entry_is_cleaned_by_the_next_claim(redis_url: str, deployment: int) -> None:
    import redis

    async def scenario() -> None:
        clock = Clock()
        a, _ = two(redis_url, clock)
        fail(a, deployment, 3)
        await a.drain()
        client = redis.Redis.from_url(redis_url)
        client.delete(*breaker.keys(deployment))  # as if the process that closed it died before updating the index
        clock.now += 31
        await a.refresh()
        assert not a.is_healthy(deployment)
        await a.drain()
        assert a.state(deployment) == CLOSED and client.hget(breaker.INDEX, str(deployment)) is None
        client.close()

    run(scenario)


@pytest.mark.needs_redis
def test_reset_closes_it_everywhere(redis_url: str, deployment: int, settings: Any) -> None:
    settings.TOLLGATE_MONEY_REDIS_URL = redis_url
    breaker.reset_breaker()

    async def scenario() -> None:
        a, b = breaker.get(), Breaker(redis_url)
        fail(a, deployment, 3)
        await a.drain()
        await b.refresh()
        assert b.state(deployment) == OPEN
        assert await asyncio.to_thread(breaker.reset, deployment) == "everywhere"
        assert a.state(deployment) == CLOSED
        await b.refresh()
        assert b.state(deployment) == CLOSED

    try:
        run(scenario)
    finally:
        breaker.reset_breaker()


def test_every_script_touches_one_cluster_slot() -> None:
    from redis.cluster import key_slot

    for deployment_id in (1, 42, 10**9):
        slots = {key_slot(key.encode()) for key in breaker.keys(deployment_id)}
        assert len(slots) == 1
    # The index is one key; each script gets either a deployment's keys or the index, never both.
    assert breaker.INDEX.startswith("tg:{breakers}")


@pytest.mark.needs_redis
def test_with_redis_down_the_process_decides_alone_and_logs_the_outage_once(
        redis_url: str, deployment: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.parse import urlsplit

    from ..faults.tcp_proxy import FaultProxy

    parts = urlsplit(redis_url)
    outages._last_logged.clear()
    monkeypatch.setattr(breaker, "RETRY_SECONDS", 60.0)  # the scenario's steps all fall within one outage
    caplog.set_level(logging.ERROR, logger="proxy.outages")

    async def scenario() -> None:
        with FaultProxy(parts.port or 6379, parts.hostname or "127.0.0.1") as proxy:
            url = f"redis://127.0.0.1:{proxy.port}{parts.path}"
            clock = Clock()
            a = Breaker(url, clock=clock)
            fail(a, deployment, 1)
            await a.drain()
            proxy.cut()
            fail(a, deployment, 1)
            await a.drain()
            fail(a, deployment, 1)  # Redis is down: the third failure trips it here, from this process's count
            await a.drain()
            await a.refresh()
            assert a.state(deployment) == OPEN and not a.is_healthy(deployment)
            clock.now += 31
            assert a.is_healthy(deployment) and not a.is_healthy(deployment)  # the probe, decided alone
            a.report(deployment, ok=True)
            await a.drain()
            assert a.state(deployment) == CLOSED
            proxy.restore()

    run(scenario)
    logged = [r for r in caplog.records if "redis unavailable" in r.getMessage()]
    assert len(logged) == 1


def test_a_success_on_a_closed_deployment_costs_no_redis_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    async def recorded(*args: Any) -> list[Any]:
        calls.append(args)
        return [[0, "0", 1, 0]]

    async def scenario() -> None:
        b = Breaker("redis://127.0.0.1:1/2", clock=Clock())
        monkeypatch.setattr(breaker.scripts, "run", recorded)
        for _ in range(100):
            b.report(7, ok=True)
            assert b.is_healthy(7)
        await b.drain()
        assert calls == [] and not b.tasks
        fail(b, 7)
        await b.drain()
        assert len(calls) == 1  # a failure: one script

    run(scenario)


@pytest.mark.needs_redis
@pytest.mark.django_db
def test_requests_never_fail_because_the_breakers_redis_is_down(redis_url: str, mock_upstream_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    from urllib.parse import urlsplit

    from django.test import Client

    from proxy import routing

    from ..conftest import make_party
    from ..faults.tcp_proxy import FaultProxy
    from ..factories import make_route

    alice = make_party("alice")
    make_route("steady", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="steady")
    make_route("broken", upstream_model="mock-500", base_url=f"{mock_upstream_url}/v1", provider_name="broken")
    routing.invalidate()
    parts = urlsplit(redis_url)

    def chat(model: str) -> int:
        payload = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
        response = Client().post("/v1/chat/completions", json.dumps(payload), content_type="application/json",
                                 headers=alice.auth)
        return int(response.status_code)

    with FaultProxy(parts.port or 6379, parts.hostname or "127.0.0.1") as proxy:
        monkeypatch.setattr(breaker, "_breaker", Breaker(f"redis://127.0.0.1:{proxy.port}{parts.path}"))
        proxy.cut()
        assert [chat("broken") for _ in range(4)] == [502] * 4  # the provider's failure, never Tollgate's 500
        assert chat("steady") == 200
        [broken] = [d for d, _ in breaker.get().mirror.items()]
        assert breaker.get().state(broken) == OPEN  # tripped in this process, from its own count
    routing.invalidate()


def test_the_breaker_runs_on_a_redis_cluster(cluster_url: str, settings: Any) -> None:
    """Every script, the admin's reads and the reset on a real cluster, with deployments whose keys live on
    different nodes than the index."""
    settings.TOLLGATE_MONEY_REDIS_URL, settings.TOLLGATE_MONEY_REDIS_CLUSTER = cluster_url, True
    breaker.reset_breaker()
    breaker._clients.clear()
    client = breaker.scripts.sync_client(cluster_url)
    index_node = client.get_node_from_key(breaker.INDEX).name
    ids = [i for i in range(1, 200) if client.get_node_from_key(breaker.keys(i)[0]).name != index_node][:2]

    async def scenario() -> None:
        clock = Clock()
        a, b = Breaker(cluster_url, clock=clock), Breaker(cluster_url, clock=clock)
        for deployment_id in ids:
            fail(a, deployment_id, 3)
        await a.drain()
        await b.refresh()
        assert [b.state(i) for i in ids] == [OPEN, OPEN]
        clock.now += 31
        for process in (a, b):
            process.is_healthy(ids[0])
        await asyncio.gather(a.drain(), b.drain())
        probes = [p for p in (a, b) if p.is_healthy(ids[0])]
        assert len(probes) == 1
        probes[0].report(ids[0], ok=True)
        await probes[0].drain()
        await asyncio.gather(a.refresh(), b.refresh())
        assert a.state(ids[0]) == b.state(ids[0]) == CLOSED and a.state(ids[1]) == HALF_OPEN

    try:
        run(scenario)
        breaker.scripts._connections.clear()
        statuses, source = breaker.statuses(ids)
        assert source == "redis" and [statuses[i].state for i in ids] == [CLOSED, OPEN]  # the admin's read (real time)
        assert breaker.reset(ids[1]) == "everywhere"
        assert breaker.statuses(ids)[0][ids[1]].state == CLOSED
    finally:
        breaker.reset_breaker()
        breaker._clients.clear()
        breaker.scripts._connections.clear()


def test_the_upkeep_refreshes_the_mirror_every_second(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy import upkeep

    refreshed: list[int] = []

    async def refresh() -> None:
        refreshed.append(1)

    b = Breaker(None)
    monkeypatch.setattr(breaker, "_breaker", b)
    monkeypatch.setattr(b, "refresh", refresh)
    asyncio.run(upkeep.every_second())
    assert refreshed == [1]
