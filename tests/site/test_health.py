"""Health probes. /health/live (and /healthz) and /health/ready are answered before Django's host check, so a probe on
127.0.0.1 passes whatever DJANGO_ALLOWED_HOSTS says; /health/detailed is an operators' Django view."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import Client
from django.utils import timezone

from gateway_site import health

from ..live import free_port as a_free_port
from ..live import tollgate_server

LIVE = ["/health/live", "/healthz"]


async def asgi_call(path: str, *, host: str = "127.0.0.1:8000", method: str = "GET",
                    query: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through the whole ASGI application, as uvicorn serves it."""
    from gateway_site.asgi import application

    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client stays connected until the response is sent
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
             "headers": [(b"host", host.encode())], "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    await asyncio.wait_for(application(scope, receive, send), timeout=10)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def probe(path: str = "/health/ready", **kwargs: Any) -> tuple[int, dict[str, Any]]:
    status, _, body = async_to_sync(asgi_call)(path, **kwargs)
    return status, json.loads(body)


@pytest.fixture(autouse=True)
def fresh_probe_state() -> Iterator[None]:
    """Each test sees the first probe of a new process: no cached answer, migrations not yet checked."""
    def reset() -> None:
        health._cache, health._last_status, health._migrated = None, None, False
        health._inflight.clear()
        health._redis_clients.clear()
    reset()
    yield
    reset()


@pytest.fixture
def free_port() -> int:
    return a_free_port()  # nothing listens there: connections are refused


@pytest.fixture
def production_hosts(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["gw.example.com"]  # as a deployment sets DJANGO_ALLOWED_HOSTS: no 127.0.0.1


def counting(monkeypatch: pytest.MonkeyPatch, name: str, result: Callable[[], health.Check] | None = None) -> list[int]:
    """Replace one check with a counting one (the original, or ``result``); returns the list of calls."""
    calls: list[int] = []
    original = result or getattr(health, name)

    def check() -> health.Check:
        calls.append(1)
        return original()

    monkeypatch.setattr(health, name, check)
    return calls


# -- liveness

@pytest.mark.parametrize("path", LIVE)
@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "not-allowed.example", ""])
def test_live_answers_200_whatever_the_host_without_touching_the_database(production_hosts: None, path: str,
                                                                          host: str) -> None:
    # No django_db mark: pytest-django makes any database access raise here.
    status, headers, body = async_to_sync(asgi_call)(path, host=host)
    assert (status, body) == (200, b"ok\n")
    assert headers[b"content-type"].startswith(b"text/plain") and headers[b"cache-control"] == b"no-store"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/admin/login/", "/login/", "/healthz/", "/health/live/", "/api/tenants/"])
def test_other_paths_still_refuse_a_host_that_is_not_allowed(production_hosts: None, path: str) -> None:
    status, _, _ = async_to_sync(asgi_call)(path, host="127.0.0.1:8000")
    assert status == 400
    status, _, _ = async_to_sync(asgi_call)("/login/", host="gw.example.com")
    assert status == 200


@pytest.mark.django_db
@pytest.mark.parametrize("path", [*LIVE, "/health/ready"])
def test_probes_take_get_and_head_only(production_hosts: None, path: str) -> None:
    status, _, body = async_to_sync(asgi_call)(path, host="127.0.0.1", method="HEAD")
    assert status == 200 and body == b""
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "BREW"):
        status, headers, _ = async_to_sync(asgi_call)(path, host="127.0.0.1", method=method)
        assert status == 405 and headers[b"allow"] == b"GET, HEAD"


@pytest.mark.django_db
@pytest.mark.parametrize("query", [b"", b"verbose=1", b"%00%ff", b"a=" + b"x" * 5000, b"<script>&&&==", b"\xff\xfe"])
def test_odd_query_strings_change_nothing(query: bytes) -> None:
    status, _, _ = async_to_sync(asgi_call)("/health/live", query=query)
    assert status == 200
    status, body = probe(query=query)
    assert status == 200 and body["status"] == "ready"


# -- readiness

@pytest.mark.django_db
def test_ready_is_200_naming_every_check(production_hosts: None, settings: Any) -> None:
    settings.REDIS_URL = os.environ.get("REDIS_URL")  # redis is checked only when configured
    status, headers, raw = async_to_sync(asgi_call)("/health/ready", host="not-allowed.example")
    body = json.loads(raw)
    assert status == 200 and headers[b"content-type"] == b"application/json" and headers[b"cache-control"] == b"no-store"
    assert body["status"] == "ready"
    expected = {"database", "migrations", "ledger"} | ({"redis"} if settings.REDIS_URL else set())
    assert set(body["checks"]) == expected
    for check in body["checks"].values():
        assert check["ok"] is True and check["ms"] >= 0


@pytest.mark.django_db
def test_ready_is_503_naming_redis_when_it_does_not_answer(settings: Any, free_port: int) -> None:
    settings.REDIS_URL = f"redis://:hunter2-password@127.0.0.1:{free_port}/1"
    started = time.monotonic()
    status, body = probe()
    assert time.monotonic() - started < health.CHECK_TIMEOUT + 1
    assert status == 503 and body["status"] == "not ready"
    assert body["checks"]["redis"]["ok"] is False and body["checks"]["database"]["ok"] is True
    assert "hunter2" not in json.dumps(body)


@pytest.mark.django_db
def test_ready_is_503_naming_the_money_redis_when_it_is_another_one_and_does_not_answer(
    settings: Any, free_port: int
) -> None:
    settings.REDIS_URL = None
    settings.TOLLGATE_MONEY_REDIS_URL = f"redis://:money-password@127.0.0.1:{free_port}/2"
    status, body = probe()
    assert status == 503 and body["checks"]["money_redis"]["ok"] is False and "redis" not in body["checks"]
    assert "money-password" not in json.dumps(body)


@pytest.mark.django_db
def test_a_hung_check_gives_503_within_the_deadline_and_is_not_started_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    calls = counting(monkeypatch, "check_database", lambda: release.wait(10) and {"ok": True})
    try:
        for _ in range(3):
            health._cache = None  # every probe runs the checks, as when they are a second apart
            started = time.monotonic()
            status, body = probe()
            assert time.monotonic() - started < health.CHECK_TIMEOUT + 0.5
            assert status == 503 and body["checks"]["database"] == {"ok": False, "ms": health.CHECK_TIMEOUT * 1000,
                                                                    "error": "no answer within 1.5 s"}
        assert len(calls) == 1  # the later probes waited on the same hung attempt
    finally:
        release.set()


@pytest.mark.django_db
def test_the_answer_is_reused_for_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting(monkeypatch, "check_database")
    assert probe()[0] == probe()[0] == 200
    assert len(calls) == 1
    health._cache = (health._cache[0] - health.CACHE_SECONDS, *health._cache[1:])  # type: ignore[index]
    assert probe()[0] == 200
    assert len(calls) == 2


@pytest.mark.django_db
def test_unapplied_migrations_give_503_and_a_positive_answer_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db.migrations import Migration
    from django.db.migrations.executor import MigrationExecutor

    plans: list[int] = []
    real_plan = MigrationExecutor.migration_plan

    def pending(self: MigrationExecutor, targets: Any, clean_start: bool = False) -> list[Any]:
        plans.append(1)
        return [(Migration("0099_later", "billing"), False)]

    monkeypatch.setattr(MigrationExecutor, "migration_plan", pending)
    status, body = probe()
    assert status == 503 and body["checks"]["migrations"]["unapplied"] == ["billing.0099_later"]
    monkeypatch.setattr(MigrationExecutor, "migration_plan", real_plan)
    health._cache = None
    assert probe()[0] == 200
    monkeypatch.setattr(MigrationExecutor, "migration_plan", pending)  # a new migration on disk, not yet applied:
    health._cache = None
    assert probe()[0] == 200  # this process was started on the migrated schema, and keeps its answer
    assert plans == [1]


@pytest.mark.django_db
def test_a_backed_up_ledger_gives_503(monkeypatch: pytest.MonkeyPatch, settings: Any, tmp_path: Path) -> None:
    from billing import ledger

    settings.TOLLGATE_READY_SPOOL_MAX_ROWS = 100
    monkeypatch.setattr(ledger, "spooled", lambda: 101)
    status, body = probe()
    assert status == 503 and "101 ledger rows wait" in body["checks"]["ledger"]["error"]
    assert body["checks"]["ledger"]["spooled_rows"] == 101

    monkeypatch.setattr(ledger, "spooled", lambda: 100)
    settings.TOLLGATE_JOURNAL_DIR = tmp_path
    settings.TOLLGATE_READY_JOURNAL_MAX_MB = 1
    (tmp_path / "host-1-abc-000001.journal").write_bytes(b"x" * (1024 * 1024 + 1))
    (tmp_path / "unrelated.txt").write_bytes(b"x" * (2 * 1024 * 1024))
    health._cache = None
    status, body = probe()
    assert status == 503 and body["checks"]["ledger"]["journal_files"] == 1 and "MB" in body["checks"]["ledger"]["error"]
    settings.TOLLGATE_READY_JOURNAL_MAX_MB = 0  # not checked
    health._cache = None
    assert probe()[0] == 200


def schedule_sent(ago: timedelta | None) -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every, _ = IntervalSchedule.objects.get_or_create(every=1, period="minutes")
    PeriodicTask.objects.update(enabled=False)
    PeriodicTask.objects.update_or_create(name="probe test", defaults={
        "task": "billing.tasks.reap_expired_holds", "interval": every, "enabled": True,
        "last_run_at": None if ago is None else timezone.now() - ago})


@pytest.mark.django_db(transaction=True)  # the probe's thread must see the rows
def test_stale_beat_gives_503_only_when_the_check_is_on(settings: Any) -> None:
    schedule_sent(timedelta(minutes=20))
    settings.TOLLGATE_READY_BEAT_MAX_AGE_SECONDS = 0
    status, body = probe()
    assert status == 200 and "beat" not in body["checks"]
    settings.TOLLGATE_READY_BEAT_MAX_AGE_SECONDS = 600
    health._cache = None
    status, body = probe()
    assert status == 503 and body["checks"]["beat"]["ok"] is False and body["checks"]["beat"]["age_seconds"] >= 1200
    schedule_sent(timedelta(seconds=30))
    health._cache = None
    status, body = probe()
    assert status == 200 and 30 <= body["checks"]["beat"]["age_seconds"] < 60


def test_errors_are_shown_without_urls_or_passwords(settings: Any) -> None:
    settings.REDIS_URL = "redis://:s3cret-redis@cache.internal:6379/0"
    error = OSError("cannot reach redis://:s3cret-redis@cache.internal:6379/0 password=pg-pass token: abc s3cret-redis")
    text = health.describe(error)
    assert text.startswith("OSError: cannot reach <url>")
    for secret in ("s3cret-redis", "pg-pass", "abc"):
        assert secret not in text


# -- dependencies really cut off, against a server in its own process

def ready_over_http(url: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    answer = httpx.get(f"{url}/health/ready", timeout=10)
    return answer.status_code, answer.json(), time.monotonic() - started


def back_within(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (answer := ready_over_http(url))[0] != 200:
        assert time.monotonic() < deadline, answer[1]
        time.sleep(0.5)


@pytest.mark.django_db(transaction=True)
def test_with_an_unreachable_database_live_is_200_and_ready_503_within_2_s(tmp_path: Path, free_port: int) -> None:
    env = {"DATABASE_URL": f"postgres://tollgate:db-password-1@127.0.0.1:{free_port}/tollgate", "REDIS_URL": "",
           "TOLLGATE_UPKEEP": "off", "TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"),
           "DJANGO_ALLOWED_HOSTS": "gw.example.com"}
    with tollgate_server(connection.settings_dict["NAME"], tmp_path / "server.log", **env) as url:
        for path in LIVE:
            assert httpx.get(f"{url}{path}", timeout=5).text == "ok\n"
        status, body, took = ready_over_http(url)
    assert status == 503 and took < 2.5
    assert body["checks"]["database"]["ok"] is False and body["checks"]["ledger"]["ok"] is True
    assert "db-password-1" not in json.dumps(body)


@pytest.mark.needs_postgres
@pytest.mark.django_db(transaction=True)
def test_ready_follows_postgresql_going_away_and_coming_back(tmp_path: Path) -> None:
    from ..faults.tcp_proxy import FaultProxy

    database = connection.settings_dict
    with FaultProxy(int(database["PORT"] or 5432)) as proxy:
        env = {"DATABASE_URL": f"postgres://{database['USER']}@127.0.0.1:{proxy.port}/{database['NAME']}",
               "TOLLGATE_UPKEEP": "off", "TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal")}
        with tollgate_server(database["NAME"], tmp_path / "server.log", **env) as url:
            assert ready_over_http(url)[0] == 200
            proxy.cut()
            time.sleep(health.CACHE_SECONDS)
            status, body, took = ready_over_http(url)
            assert status == 503 and not body["checks"]["database"]["ok"] and took < 2.5, body
            proxy.restore()
            back_within(url, 10)  # the connection pool reconnects with a backoff of its own


@pytest.mark.needs_redis
@pytest.mark.django_db(transaction=True)
def test_ready_follows_redis_going_away_and_coming_back(tmp_path: Path) -> None:
    from ..faults.tcp_proxy import FaultProxy

    redis_url = urlsplit(os.environ["REDIS_URL"])
    with FaultProxy(redis_url.port or 6379) as proxy:
        env = {"REDIS_URL": f"redis://127.0.0.1:{proxy.port}{redis_url.path}", "TOLLGATE_UPKEEP": "off",
               "TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal")}
        with tollgate_server(connection.settings_dict["NAME"], tmp_path / "server.log", **env) as url:
            assert ready_over_http(url)[0] == 200
            proxy.cut()
            time.sleep(health.CACHE_SECONDS)
            status, body, took = ready_over_http(url)
            assert status == 503 and not body["checks"]["redis"]["ok"] and body["checks"]["database"]["ok"], body
            assert took < 2.5
            proxy.restore()
            time.sleep(health.CACHE_SECONDS)
            assert ready_over_http(url)[0] == 200


# -- detailed

OPS_TOKEN = "ops-token-for-tests-0123456789"
PROVIDER_KEY = "sk-provider-secret-abcdef123456"


@pytest.fixture
def operators(settings: Any, db: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from gateway_site import health_views

    from ..factories import make_user

    monkeypatch.setattr(health_views, "WORKER_PING", 0.2)  # no worker runs here: the ping waits out its timeout
    settings.TOLLGATE_OPS_TOKEN = OPS_TOKEN
    staff = make_user("olivia", is_staff=True)
    member = make_user("mallory")
    return {"staff": staff, "member": member}


def trip(deployment_id: int) -> None:
    """Open the deployment's circuit breaker as failing requests do (in Redis too, when it is configured)."""
    from django.conf import settings

    from proxy import breaker

    async def fail() -> None:
        circuit = breaker.get()
        for _ in range(settings.TOLLGATE_BREAKER_FAILURES):
            circuit.report(deployment_id, ok=False)
        await circuit.drain()

    async_to_sync(fail)()


def detailed(client: Client, **headers: str) -> Any:
    return client.get("/health/detailed", headers=headers)


def test_detailed_refuses_everyone_but_operators_with_json(operators: dict[str, Any]) -> None:
    anonymous = detailed(Client())
    assert anonymous.status_code == 401 and anonymous["Content-Type"] == "application/json"
    assert "Location" not in anonymous and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert detailed(Client(), Authorization="Bearer wrong-token").status_code == 401
    assert detailed(Client(), Authorization=f"Basic {OPS_TOKEN}").status_code == 401
    member = Client()
    member.force_login(operators["member"])
    refused = detailed(member)
    assert refused.status_code == 403 and refused.json() == {"detail": "Operators (staff) only."}
    staff = Client()
    staff.force_login(operators["staff"])
    assert detailed(staff).status_code == 200
    assert detailed(Client(), Authorization=f"Bearer {OPS_TOKEN}").status_code == 200


def test_detailed_with_no_token_configured_accepts_no_token(operators: dict[str, Any], settings: Any) -> None:
    settings.TOLLGATE_OPS_TOKEN = ""
    assert detailed(Client(), Authorization="Bearer ").status_code == 401
    assert detailed(Client(), Authorization="Bearer").status_code == 401


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch"])
def test_detailed_other_methods_are_405_json(operators: dict[str, Any], method: str) -> None:
    answer = getattr(Client(), method)("/health/detailed", headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert answer.status_code == 405 and answer.json() == {"detail": "GET or HEAD only."}


@pytest.mark.parametrize("query", ["?format=xml", "?%00=%ff", "?a=" + "x" * 5000, "?providers=../../etc"])
def test_detailed_odd_query_strings_change_nothing(operators: dict[str, Any], query: str) -> None:
    answer = Client().get("/health/detailed" + query, headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    assert answer.status_code == 200


@pytest.mark.django_db(transaction=True)  # the report's threads must see the rows
def test_detailed_reports_providers_from_the_ledger_and_shows_no_secret(operators: dict[str, Any], settings: Any) -> None:
    from billing.models import UsageRecord
    from proxy import breaker
    from proxy.models import Deployment, Provider

    from ..conftest import make_party
    from ..factories import make_route

    alice = make_party("alice")
    make_route("gpt-4o", upstream_model="gpt-4o-2024", base_url="http://127.0.0.1:9/v1", provider_name="openai")
    provider = Provider.objects.get(name="openai")
    provider.set_credential(PROVIDER_KEY)
    provider.save()
    deployment = Deployment.objects.get(provider=provider)
    now = timezone.now()
    rows = [("complete", "", 200, 30), ("complete", "", 200, 20), ("upstream_error", "rate_limited", 429, 10),
            ("client_gone", "", 499, 5), ("complete", "", 200, 600)]
    for end_reason, code, status, seconds_ago in rows:
        UsageRecord.objects.create(tenant=alice.tenant, key=alice.key, endpoint="chat", public_model="gpt-4o",
                                   provider="openai", upstream_model="gpt-4o-2024", end_reason=end_reason,
                                   error_code=code, status_code=status, created_at=now - timedelta(seconds=seconds_ago))
    trip(deployment.pk)
    try:
        answer = detailed(Client(), Authorization=f"Bearer {OPS_TOKEN}")
    finally:
        breaker.reset(deployment.pk)
    assert answer.status_code == 200 and answer["Cache-Control"] == "no-store"
    text = answer.content.decode()
    for secret in (OPS_TOKEN, settings.SECRET_KEY, PROVIDER_KEY, settings.TOLLGATE_KEY_PEPPER, alice.secret):
        assert secret not in text
    report = answer.json()
    for part in ("database", "migrations", "ledger"):
        assert report[part]["ok"] is True and report[part]["ms"] >= 0
    assert report["redis"]["ok"] is True
    celery = report["celery"]
    assert celery["queues"]["ok"] and "celery" in celery["queues"]["depths"]
    assert isinstance(celery["workers"].get("seen", []), list)
    assert "heartbeat_age_seconds" in celery["beat"]
    assert ("all processes" if settings.TOLLGATE_MONEY_REDIS_URL else "this process") in report["providers"]["breaker_scope"]
    [openai] = report["providers"]["items"]
    [shown] = openai["deployments"]
    assert shown["route"] == "gpt-4o" and shown["upstream_model"] == "gpt-4o-2024"
    assert shown["breaker"]["state"] == "open" and shown["breaker"]["failures"] == settings.TOLLGATE_BREAKER_FAILURES
    assert shown["breaker"]["reopens_at"] > "2000" and 0 < shown["breaker"]["cooldown_left_seconds"] <= 30
    [benched] = report["breakers"]["items"]
    assert benched["deployment"] == deployment.pk and benched["provider"] == "openai" and benched["state"] == "open"
    assert shown["last_failure_reason"] == "upstream_error rate_limited 429"
    assert shown["requests_5m"] == 3 and shown["failures_5m"] == 1 and shown["error_rate_5m"] == round(1 / 3, 4)
    assert shown["last_failure"] > shown["last_success"] > "2000"
    assert report["settings"]["ops_token_set"] is True and "version" in report


# -- Celery status (also read by the metrics)

@pytest.fixture
def broker(settings: Any, tmp_path: Path) -> Iterator[str]:
    """The configured broker, with the filesystem transport's folder moved to tmp_path; Redis db emptied after."""
    from gateway_site.celery import app

    saved = dict(app.conf.broker_transport_options or {})
    if app.conf.broker_url.startswith("filesystem"):
        app.conf.broker_transport_options = {**saved, "data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path),
                                             "control_folder": str(tmp_path)}
    yield app.conf.broker_url
    app.conf.broker_transport_options = saved
    if app.conf.broker_url.startswith("redis"):
        with app.connection_for_write() as conn:
            conn.default_channel.client.delete("celery")


def test_queue_depths_count_waiting_messages_on_the_configured_broker(broker: str) -> None:
    from gateway_site import celery_status
    from gateway_site.celery import app

    before = celery_status.queue_depths()["celery"]
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue("celery")
        queue.put({"probe": 1})
        queue.put({"probe": 2})
        queue.close()
    assert celery_status.queue_depths()["celery"] == before + 2


def test_queue_depths_include_the_batch_tiers_queues_before_anything_was_sent_to_them(broker: str) -> None:
    from django.conf import settings

    from gateway_site import celery_status
    from gateway_site.celery import app

    low = settings.TOLLGATE_QUEUES["low"]
    depths = celery_status.queue_depths()
    assert {"celery", *settings.TOLLGATE_QUEUES.values()} <= set(depths)
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue(low)
        queue.put({"probe": 1})
        queue.close()
        try:
            assert celery_status.queue_depths()[low] == depths[low] + 1
        finally:
            conn.default_channel.queue_purge(low)


def test_queue_depths_and_workers_raise_when_the_broker_is_down(broker: str, free_port: int) -> None:
    from gateway_site import celery_status
    from gateway_site.celery import app

    saved = app.conf.broker_url
    app.conf.broker_url = f"redis://127.0.0.1:{free_port}/1"
    try:
        started = time.monotonic()
        with pytest.raises(Exception, match="onnection refused"):
            celery_status.queue_depths()
        with pytest.raises(Exception, match="onnection refused"):
            celery_status.workers_seen(0.2)
        assert time.monotonic() - started < 2 * celery_status.BROKER_TIMEOUT_SECONDS
    finally:
        app.conf.broker_url = saved


def test_no_worker_answers_the_ping(broker: str) -> None:
    from gateway_site import celery_status

    assert celery_status.workers_seen(0.2) == []


@pytest.mark.django_db
def test_beat_heartbeat_age_is_the_newest_send_of_an_enabled_task() -> None:
    from django_celery_beat.models import PeriodicTask

    from gateway_site import celery_status

    PeriodicTask.objects.update(last_run_at=None)
    assert celery_status.beat_heartbeat_age() is None
    schedule_sent(timedelta(minutes=3))
    assert 180 <= celery_status.beat_heartbeat_age() < 200  # type: ignore[operator]
    PeriodicTask.objects.filter(name="Roll up usage").update(enabled=False, last_run_at=timezone.now())
    assert 180 <= celery_status.beat_heartbeat_age() < 200  # type: ignore[operator]  # disabled tasks do not count
