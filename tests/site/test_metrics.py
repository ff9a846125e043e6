"""Prometheus metrics: who may read /metrics, what the shared directory keeps, and that a scrape after known traffic
through live processes (two uvicorn workers) adds up to the ledger."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection
from django.db.models import Sum
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import ApiKey
from billing.models import Budget, Price, UsageRecord
from gateway_site import metrics

from ..conftest import Party, make_party
from ..factories import make_route
from ..live import BASE_DIR, free_port, stop, wait_for_port

TOKEN = "ops-token-for-the-metrics-tests-0123456789"
CHAT = {"model": "mock", "messages": [{"role": "user", "content": "Hello"}]}


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of an exposition by its name, with its labels."""
    found: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def total(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(value for have, value in found.get(name, []) if all(have.get(k) == v for k, v in labels.items()))


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# --- who may read /metrics (in process)


def call(headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {"type": "http", "method": method, "path": "/metrics",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(metrics.app(scope, None, send))
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


@pytest.fixture
def metrics_on(settings: Any) -> Any:
    if not metrics.enabled():
        pytest.skip("TOLLGATE_METRICS is off in this test run")
    settings.TOLLGATE_OPS_TOKEN, settings.TOLLGATE_METRICS_BIND = TOKEN, ""
    return settings


@pytest.mark.django_db
def test_metrics_need_the_ops_token(metrics_on: Any) -> None:
    status, headers, body = call()
    assert status == 401 and headers[b"www-authenticate"].startswith(b"Bearer")
    assert "TOLLGATE_OPS_TOKEN" in json.loads(body)["error"]["message"]
    assert call({"Authorization": "Bearer not-the-token"})[0] == 401
    assert call({"Authorization": TOKEN})[0] == 401  # no scheme
    status, headers, body = call({"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and headers[b"content-type"].startswith(b"text/plain; version=0.0.4")
    assert b"tollgate_requests_in_flight" in body and TOKEN.encode() not in body
    assert call({"Authorization": f"Bearer {TOKEN}"}, method="POST")[0] == 405


@pytest.mark.django_db
def test_metrics_are_not_open_without_a_token_or_a_bind_address(metrics_on: Any) -> None:
    metrics_on.TOLLGATE_OPS_TOKEN = ""
    status, _, body = call({"Authorization": "Bearer "})
    assert status == 403 and "TOLLGATE_METRICS_BIND" in json.loads(body)["error"]["message"]
    metrics_on.TOLLGATE_METRICS_BIND = "127.0.0.1:9464"
    status, _, body = call()
    assert status == 404 and "127.0.0.1:9464" in json.loads(body)["error"]["message"]
    metrics_on.TOLLGATE_METRICS = False
    status, _, body = call()
    assert status == 404 and "TOLLGATE_METRICS" in json.loads(body)["error"]["message"]


@pytest.mark.django_db
def test_celery_tasks_are_counted_through_signals(metrics_on: Any) -> None:
    from billing.tasks import reap_expired_holds

    found = samples(metrics.render().decode())
    name = reap_expired_holds.name
    before = total(found, "tollgate_celery_tasks_total", task=name, state="success")
    durations = total(found, "tollgate_celery_task_duration_seconds_count", task=name)
    reap_expired_holds.delay()  # eager in tests: the worker's signals fire all the same
    found = samples(metrics.render().decode())
    assert total(found, "tollgate_celery_tasks_total", task=name, state="success") == before + 1
    assert total(found, "tollgate_celery_task_duration_seconds_count", task=name) == durations + 1


# --- the shared directory


def touch(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_bytes(b"")
    return path


def test_a_fresh_start_removes_every_file_of_dead_processes(tmp_path: Path) -> None:
    gone = dead_pid()
    old = [touch(tmp_path, f"counter_{gone}.db"), touch(tmp_path, f"histogram_{gone}.db"),
           touch(tmp_path, f"gauge_livesum_{gone}.db")]
    reused = touch(tmp_path, f"counter_{os.getpid()}.db")  # an earlier process had this process's id
    assert metrics.clean(tmp_path, own_pid=os.getpid()) == 4
    assert not any(path.exists() for path in [*old, reused])


def test_beside_live_processes_a_dead_process_keeps_its_counters(tmp_path: Path) -> None:
    # One worker restarted while the others run: dropping its counters would make the sums go down, which
    # Prometheus reads as a reset; only its live gauges (in flight) go.
    gone, other = dead_pid(), os.getppid()
    counter, histogram = touch(tmp_path, f"counter_{gone}.db"), touch(tmp_path, f"histogram_{gone}.db")
    live_gauge = touch(tmp_path, f"gauge_livesum_{gone}.db")
    others = touch(tmp_path, f"counter_{other}.db")
    assert metrics.clean(tmp_path, own_pid=os.getpid()) == 1
    assert counter.exists() and histogram.exists() and others.exists() and not live_gauge.exists()


@pytest.mark.needs_redis
@pytest.mark.django_db
def test_holds_outstanding_is_the_size_of_the_lease_set(metrics_on: Any) -> None:
    import redis

    from billing import holds

    from billing import keyspace

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.delete(keyspace.TENANTS, keyspace.leases(1), keyspace.leases(2))
    client.hset(keyspace.TENANTS, mapping={1: 0, 2: 0})
    client.zadd(keyspace.leases(1), {"a": 1, "b": 2})  # every tenant's lease set counts
    client.zadd(keyspace.leases(2), {"c": 3})
    try:
        assert metrics.holds_outstanding() == 3
    finally:
        client.delete(keyspace.TENANTS, keyspace.leases(1), keyspace.leases(2))


# --- live processes


@contextmanager
def tollgate(log: Path, metrics_dir: Path, *, workers: int = 1, **env: str) -> Iterator[str]:
    """Tollgate under uvicorn with metrics in ``metrics_dir``; yields its root URL."""
    port = free_port()
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test",
                   "TOLLGATE_LIVE_TEST_DATABASE": connection.settings_dict["NAME"], "TOLLGATE_ROUTES_CACHE_SECONDS": "0",
                   "TOLLGATE_UPKEEP": "on", "TOLLGATE_METRICS": "on", "TOLLGATE_METRICS_DIR": str(metrics_dir),
                   "TOLLGATE_OPS_TOKEN": TOKEN, **env}
    command = [sys.executable, "-m", "uvicorn", "gateway_site.asgi:application", "--host", "127.0.0.1",
               "--port", str(port), "--lifespan", "on", "--no-access-log", "--workers", str(workers)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=BASE_DIR, env=environment, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, process=process)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/healthz").status_code != 200:  # every worker has started once this answers
                assert time.monotonic() < deadline
                time.sleep(0.1)
            yield url
        finally:
            stop(process, 10)


def scrape(url: str) -> str:
    r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.text


def scrape_counting(url: str, requests: int, rows: int = 0) -> str:
    """A scrape once it counts ``requests`` /v1 requests and ``rows`` ledger rows: each process writes its /v1 values
    once a second, and a row is counted when its write returns, a little after the request itself."""
    deadline = time.monotonic() + 5
    while True:
        text = scrape(url)
        found = samples(text)
        if (total(found, "tollgate_requests_total") >= requests and
                total(found, "tollgate_ledger_write_seconds_count") >= rows) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def answered_by(directory: Path) -> set[int]:
    """The processes whose files count at least one /v1 request."""
    pids = set()
    for path in directory.glob("counter_*.db"):
        if any("tollgate_requests" in key for key, *_ in MmapedDict.read_all_values_from_file(str(path))):
            pids.add(int(path.stem.rpartition("_")[2]))
    return pids


def rows_settle(expected: int) -> None:
    deadline = time.monotonic() + 10
    while UsageRecord.objects.count() < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert UsageRecord.objects.count() == expected


@pytest.fixture
def routed(mock_upstream_url: str, transactional_db: None) -> None:
    for model in ("mock", "mock-500", "mock-cut"):
        make_route(model, upstream_model=model, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
        Price.objects.create(model=model, input_per_million=Decimal("100"), output_per_million=Decimal("200"))


@pytest.mark.django_db(transaction=True)
def test_a_scrape_of_two_workers_adds_up_to_the_ledger(routed: None, tmp_path: Path) -> None:
    alice, bob, carol = make_party("alice"), make_party("bob"), make_party("carol")
    Budget.objects.create(tenant=bob.tenant, amount=Decimal("0.000001"), hard=True)  # smaller than any request
    ApiKey.objects.filter(pk=carol.key.pk).update(tokens_per_minute=1)  # smaller than any request
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale = MmapedDict(str(directory / f"counter_{dead_pid()}.db"))  # what a run before left behind
    stale.write_value(json.dumps(["tollgate_requests", "tollgate_requests_total", {}, "stale"]), 1000.0, 0.0)
    stale.close()

    with tollgate(tmp_path / "tollgate.log", directory, workers=2, TOLLGATE_METRICS_TENANT_LABEL="on") as url:
        answered = send_traffic(url, alice, bob, carol, directory)
        rows_settle(answered - 1)  # the request with a bad key leaves no row
        text = scrape_counting(url, answered, answered - 1)

    found = samples(text)
    rows = UsageRecord.objects.all()
    sums = rows.aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cost=Sum("cost_picos"))
    assert total(found, "tollgate_requests_total") == answered == rows.count() + 1  # the stale 1000 is gone
    assert total(found, "tollgate_requests_total", end_reason="complete", status_class="2xx") == \
        rows.filter(end_reason="complete").count()
    assert total(found, "tollgate_prompt_tokens_total") == sums["prompt"] > 0
    assert total(found, "tollgate_completion_tokens_total") == sums["completion"] > 0
    assert total(found, "tollgate_cost_dollars_total") == pytest.approx(sums["cost"] / 10**12, rel=1e-9)
    assert total(found, "tollgate_request_duration_seconds_count") == answered
    assert total(found, "tollgate_ledger_write_seconds_count") == rows.count()
    assert total(found, "tollgate_requests_in_flight") == 0
    for reason in ("budget", "rate", "model", "auth", "invalid"):
        assert total(found, "tollgate_refusals_total", reason=reason) == 1, reason
    assert total(found, "tollgate_upstream_errors_total", provider="mock", kind="status_5xx") == 1
    assert total(found, "tollgate_upstream_errors_total", provider="mock", kind="cut") == 1
    tenants = {labels.get("tenant") for labels, _ in found["tollgate_requests_total"]}
    assert {"alice", "bob", "carol", ""} <= tenants  # "": the bad key has no tenant
    assert not {labels.get("model") for labels, _ in found["tollgate_requests_total"]} - {"mock", "mock-500", "mock-cut", ""}
    for secret in (TOKEN, alice.secret, bob.secret, carol.secret, "UPSTREAM-SECRET"):
        assert secret not in text


def send_traffic(url: str, alice: Party, bob: Party, carol: Party, directory: Path) -> int:
    """Known requests, spread over both workers. Returns how many were sent."""
    v1 = f"{url}/v1/chat/completions"
    close = {"Connection": "close"}  # a new connection each: the workers take turns accepting them

    def post(auth: dict[str, str], body: Any) -> int:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(v1, headers={**auth, **close, "Content-Type": "application/json"}, content=content,
                          timeout=10).status_code

    assert post(alice.auth, {**CHAT, "stream": True, "stream_options": {"include_usage": True}}) == 200
    assert post(alice.auth, {**CHAT, "model": "mock-500"}) == 502
    assert post(alice.auth, {**CHAT, "model": "mock-cut", "stream": True}) == 200  # the cut is reported in-band
    assert post(alice.auth, {**CHAT, "model": "no-such-model"}) == 404
    assert post(alice.auth, b"{not json") == 400
    assert post({"Authorization": "Bearer tg-not-a-key"}, CHAT) == 401
    assert post(bob.auth, CHAT) == 429
    assert post(carol.auth, CHAT) == 429
    sent = 8
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            assert set(pool.map(lambda _: post(alice.auth, CHAT), range(8))) == {200}
            sent += 8
            deadline = time.monotonic() + 1.5  # the workers write their /v1 values once a second
            while len(answered_by(directory)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            if len(answered_by(directory)) >= 2:
                return sent
    raise AssertionError(f"one worker answered everything: {answered_by(directory)}")


@pytest.mark.django_db(transaction=True)
def test_bind_address_without_token_and_scrape_while_redis_is_down(routed: None, tmp_path: Path) -> None:
    alice = make_party("alice")
    bind = f"127.0.0.1:{free_port()}"
    dead_redis = f"redis://127.0.0.1:{free_port()}/2"
    with tollgate(tmp_path / "tollgate.log", tmp_path / "metrics", REDIS_URL=dead_redis,
                  TOLLGATE_METRICS_BIND=bind) as url:
        httpx.post(f"{url}/v1/chat/completions", headers=alice.auth, json=CHAT, timeout=10)  # 503 or 200: counted
        assert httpx.get(f"{url}/metrics").status_code == 401
        started = time.monotonic()
        text = scrape_counting(url, 1)
        assert time.monotonic() - started < 8  # each source waits 2 s at most
        r = httpx.get(f"http://{bind}/metrics", timeout=10)  # no token on the metrics address
        assert r.status_code == 200 and "tollgate_requests_total" in r.text
        assert httpx.get(f"http://{bind}/v1/models", timeout=10).status_code == 404
    found = samples(text)
    assert total(found, "tollgate_requests_total") == 1
    assert all("tenant" not in labels for labels, _ in found["tollgate_requests_total"])  # off by default
    assert total(found, "tollgate_metrics_source_errors_total", source="holds") >= 1
    assert "tollgate_budget_holds_outstanding" not in found  # skipped, not zero
    assert total(found, "process_resident_memory_bytes") > 0
