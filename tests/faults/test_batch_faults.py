"""The queued path under faults: a worker killed mid-batch, Redis and PostgreSQL cut off while a batch runs.

Real processes share PostgreSQL, Redis (also the Celery broker) and a journal directory: a uvicorn server (the
Files and Batches API, and an upkeep that replays dead processes' journals) and Celery workers consuming the
default tier's queue and the beat jobs' queue, one of them with beat embedded, which sends batches.tend_batches
every second (its schedule, batches/migrations/0002, says every 10 s). The provider is a slow upstream of the
test's own that counts what it receives per custom_id (each line's prompt is its custom_id), so "no line executed
twice" is seen where it matters: at the provider.

After each fault: every custom_id is in the output or the error file exactly once; no custom_id reached the
provider twice; every line that reached it has exactly one ledger row (by batch and custom_id), and a line's row is
the one its output or error line names; the budget's totals equal the ledger, and no hold or in-flight slot is
left. A killed process's journal is replayed by a survivor. Last, in process: a line claim whose commit's answer
was lost in a blip.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from django.apps import apps
from django.conf import settings
from django.db import OperationalError, connection
from django.db.models import Sum
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from batches.models import Batch, BatchLine, BatchPart
from bench import mock_upstream
from billing import budgets, keyspace
from billing.models import Budget, Price, UsageRecord

from ..conftest import Party, make_party
from ..factories import make_route
from ..live import celery_process, serve_app, tollgate_server
from .tcp_proxy import FaultProxy

pytestmark = [
    pytest.mark.django_db(transaction=True),  # the server and the workers must see the rows
    pytest.mark.needs_postgres,
    pytest.mark.needs_redis,
]

LINES = 210
PART_LINES = 70  # three parts
IN_FLIGHT = 16  # lines in flight per worker process
LEASE = 5  # the part lease (TOLLGATE_BATCH_LEASE_SECONDS' minimum): a dead worker's part moves after this
HOLD_LEASE = 8  # budget holds and in-flight slots of a dead process heal within about this
CUT = 2.0  # seconds a blip lasts
FINISHED = {"completed", "failed", "cancelled", "expired"}
T = TypeVar("T")


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


# --- The provider: slow, and it remembers what it was asked.


@dataclass
class Recorder:
    """An OpenAI-compatible chat upstream answering after 100-200 ms, counting requests per prompt (custom_id)."""

    seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await mock_upstream.read_body(receive)
        marker = str(body["messages"][-1]["content"])
        with self.lock:
            self.seen[marker] += 1
        await asyncio.sleep(0.1 + zlib.crc32(marker.encode()) % 100 / 1000)
        await mock_upstream.send_json(send, 200, mock_upstream.CHAT_RESPONSE)

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(self.seen)


@contextmanager
def upstream(recorder: Recorder) -> Iterator[str]:
    with serve_app(recorder) as url:
        yield url


# --- Processes.


@contextmanager
def worker(name: str, tmp_path: Path, env: dict[str, str], *, beat: bool = False) -> Iterator[Any]:
    """A Celery worker (one prefork child) on the default tier's queue and the beat jobs' queue; with ``beat``, beat
    runs embedded in it (as under ./tollgate run)."""
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test",
                   "TOLLGATE_LIVE_TEST_DATABASE": connection.settings_dict["NAME"], **env}
    queues = f"{settings.TOLLGATE_QUEUES['default']},celery"
    args = ["worker", "--loglevel", "INFO", "--concurrency", "1", "--queues", queues, "--hostname", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", *(["--beat"] if beat else [])]
    log = tmp_path / f"{name}.log"
    with celery_process(args, environment, log) as process:
        # Ready to take tasks (so a batch sent now is shared by the workers the test started).
        wait_for(lambda: f"{name}@" in (text := log.read_text(errors="replace")) and " ready." in text
                 or process.poll() is not None, 60, f"worker {name} ready")
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        yield process


def tend_every_second() -> None:
    """The schedule batches/migrations/0002 creates (the test database is emptied between tests), every second
    instead of every 10 s, as an operator would set it in the admin."""
    migration = importlib.import_module("batches.migrations.0002_tend_schedule")
    migration.create_schedule(apps, None)
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    assert PeriodicTask.objects.filter(task="batches.tend_batches").update(interval=every_second) == 1


def base_env(tmp_path: Path) -> dict[str, str]:
    return {
        "TOLLGATE_JOURNAL_DIR": str(tmp_path / "journal"),  # shared: a survivor replays a dead process's journal
        "TOLLGATE_RESERVATION_LEASE_SECONDS": str(HOLD_LEASE),
        "TOLLGATE_BATCH_LEASE_SECONDS": str(LEASE),
        "TOLLGATE_BATCH_PART_LINES": str(PART_LINES),
        "TOLLGATE_BATCH_CONCURRENCY": ",".join(f"{q}={IN_FLIGHT}" for q in settings.TOLLGATE_QUEUES.values()),
        "TOLLGATE_UPKEEP": "on",
    }


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def wait_for(condition: Callable[[], object], timeout: float, what: str = "") -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"not within {timeout} s: {what}"
        time.sleep(0.1)
    return time.monotonic() - started


def first_found(find: Callable[[], T | None], timeout: float, what: str) -> T:
    """Ask ``find`` until it finds something, and return it."""
    deadline = time.monotonic() + timeout
    while (found := find()) is None:
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)
    return found


def pid_of(part: BatchPart) -> int:
    """The process id in a part's worker field (host:pid)."""
    return int(part.worker.rpartition(":")[2])


# --- The batch.


@pytest.fixture
def alice(transactional_db: None) -> Party:
    redis_client().flushdb()  # also the broker's queues: no task of an earlier run is left
    party = make_party("alice")
    Budget.objects.create(tenant=party.tenant, amount=Decimal("100"), period="month")
    # A batch may take half of it (TOLLGATE_BATCH_RATE_SHARE): room for two workers' lines, and the slots are checked.
    party.key.max_concurrent = 4 * IN_FLIGHT + 8
    party.key.save()
    return party


def add_route(upstream_url: str) -> None:
    make_route("slow", upstream_model="slow", base_url=f"{upstream_url}/v1", provider_name="recorder")
    Price.objects.create(model="slow", input_per_million=Decimal("100"), output_per_million=Decimal("200"))


def custom_ids() -> list[str]:
    return [f"line-{i:03d}" for i in range(LINES)]


def create_batch(url: str, party: Party) -> Batch:
    content = b"".join(json.dumps({
        "custom_id": c, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "slow", "max_tokens": 5, "messages": [{"role": "user", "content": c}]},
    }).encode() + b"\n" for c in custom_ids())
    with httpx.Client(base_url=url, headers=party.auth, timeout=30) as http:
        r = http.post("/v1/files", data={"purpose": "batch"}, files={"file": ("lines.jsonl", content, "application/jsonl")})
        assert r.status_code == 200, r.text
        r = http.post("/v1/batches", json={"input_file_id": r.json()["id"], "endpoint": "/v1/chat/completions",
                                           "completion_window": "24h"})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "validating"
        return Batch.objects.get(public_id=r.json()["id"])


def succeeded(batch: Batch) -> int:
    return BatchLine.objects.filter(batch=batch, state="succeeded").count()


def finish(batch: Batch, timeout: float, logs: Path) -> Batch:
    def done() -> bool:
        batch.refresh_from_db()
        return batch.status in FINISHED

    try:
        wait_for(done, timeout, f"batch {batch.public_id} still {batch.status}")
    except AssertionError:
        raise AssertionError(f"batch {batch.public_id} still {batch.status} after {timeout} s, parts "
                             f"{list(BatchPart.objects.filter(batch=batch).values_list('state', 'worker'))}\n"
                             + tails(logs)) from None
    return batch


def tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.glob("*.log")))


@dataclass
class Outcome:
    output: dict[str, dict[str, Any]]  # custom_id -> output line
    errors: dict[str, dict[str, Any]]  # custom_id -> error line
    rows: dict[str, UsageRecord]  # custom_id -> ledger row of the batch
    arrived: Counter[str]  # custom_id -> requests the provider received

    def failures(self) -> dict[str, tuple[str, int, str]]:
        """For a failed check's message: each failed line's reason, requests at the provider, row's end reason."""
        return {c: (reason_of(line), self.arrived[c], self.rows[c].end_reason if c in self.rows else "no row")
                for c, line in self.errors.items()}


def api_get(url: str, party: Party, path: str) -> httpx.Response:
    """GET as the SDKs do: a 503 that says x-should-retry is asked again (the web process may still hand out a
    database connection the blip broke); anything else is the answer."""
    for _ in range(20):
        r = httpx.get(f"{url}{path}", headers=party.auth, timeout=30)
        if r.status_code != 503 or r.headers.get("x-should-retry") != "true":
            break
        assert r.json()["error"]["code"] == "service_unavailable", r.text
        time.sleep(0.1)
    assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
    return r


def download(url: str, party: Party, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    r = api_get(url, party, f"/v1/files/{file_id}/content")
    return [json.loads(line) for line in r.text.splitlines() if line]


def outcome(url: str, party: Party, batch: Batch, recorder: Recorder) -> Outcome:
    """Check what holds after any fault, and return the files and rows for the fault's own checks."""
    # What a client polling the batch sees (the first request after a blip too).
    r = api_get(url, party, f"/v1/batches/{batch.public_id}")
    assert r.json()["status"] == batch.status
    assert r.json()["request_counts"] == {"total": batch.total, "completed": batch.completed, "failed": batch.failed}
    output_lines = download(url, party, batch.output_file.public_id if batch.output_file else None)
    error_lines = download(url, party, batch.error_file.public_id if batch.error_file else None)
    output = {line["custom_id"]: line for line in output_lines}
    errors = {line["custom_id"]: line for line in error_lines}
    # No line lost, none written twice, in input order.
    listed = [line["custom_id"] for line in output_lines] + [line["custom_id"] for line in error_lines]
    assert sorted(listed) == custom_ids(), Counter(listed).most_common(3)
    assert [line["custom_id"] for line in output_lines] == sorted(output)
    assert [line["custom_id"] for line in error_lines] == sorted(errors)
    assert (batch.total, batch.completed, batch.failed) == (LINES, len(output), len(errors))
    for line in output_lines:
        assert line["error"] is None and line["response"]["status_code"] == 200, line
        assert line["response"]["body"]["choices"][0]["message"]["content"] == "Hello from the mock."
    # Each line reached the provider at most once.
    arrived = recorder.counts()
    assert set(arrived) <= set(custom_ids())
    assert [c for c, n in arrived.items() if n > 1] == []
    assert set(output) <= set(arrived)
    # Every line that reached the provider has its one row; a succeeded line's row is the one its output names.
    rows_of = UsageRecord.objects.filter(batch_id=batch.public_id)
    wait_for(lambda: set(arrived) <= set(rows_of.values_list("custom_id", flat=True)), 3 * HOLD_LEASE,
             "a row for every line that reached the provider")
    rows = list(rows_of)
    by_custom_id = {r.custom_id: r for r in rows}
    assert len(by_custom_id) == len(rows)
    assert set(arrived) <= set(by_custom_id) <= set(custom_ids())
    assert UsageRecord.objects.filter(tenant=party.tenant).exclude(batch_id=batch.public_id).count() == 0
    for c, line in output.items():
        row = by_custom_id[c]
        assert (row.request_id, row.end_reason, row.status_code) == (
            uuid.UUID(line["response"]["request_id"]), "complete", 200)
        assert row.cost_picos > 0
    for c, line in errors.items():
        if line["response"] is not None:  # it ran and failed: its row is the refusal or failure it answers
            row = by_custom_id[c]
            assert (row.request_id, row.status_code) == (uuid.UUID(line["response"]["request_id"]),
                                                         line["response"]["status_code"])
            if c not in arrived:
                assert row.cost_picos == 0, (row.end_reason, row.cost_picos)
    check_money(party)
    return Outcome(output=output, errors=errors, rows=by_custom_id, arrived=arrived)


def journal_replayed(tmp_path: Path, pid: int) -> None:
    """The killed process's journal was replayed and removed by a survivor's upkeep."""
    wait_for(lambda: not list((tmp_path / "journal").glob(f"*-{pid}-*.journal")), 3 * HOLD_LEASE,
             f"the journal of process {pid} replayed")


def no_journal_left(tmp_path: Path) -> None:
    """Every process stopped (a worker's pool processes close their journals as they exit), and every request
    they began is written and settled: no journal file is left."""
    assert list((tmp_path / "journal").glob("*.journal")) == []


def check_money(party: Party) -> None:
    """Budget totals equal the ledger to the pico-dollar; nothing reserved, no open hold, no slot counted in flight."""
    budget = Budget.objects.get(tenant=party.tenant)
    client = redis_client()
    slots = f"{keyspace.rate(party.tenant.pk, '*', '*')}:c"

    def healed() -> bool:
        return (budgets.status(budget).reserved_micros == 0
                and int(client.zcard(keyspace.leases(party.tenant.pk))) == 0
                # A slot taken by a process killed before it journaled the request is dropped once its lease ran
                # out (the admission script ignores it from then on): no slot with a live lease is left.
                and all(int(client.zcount(k, time.time(), "+inf")) == 0 for k in client.scan_iter(match=slots)))

    def left() -> str:
        return (f"reserved {budgets.status(budget).reserved_micros} micros; holds "
                f"{client.zrange(keyspace.leases(party.tenant.pk), 0, -1, withscores=True)}; slots "
                f"{ {k: client.zrange(k, 0, -1, withscores=True) for k in client.scan_iter(match=slots)} } at {time.time()}")

    try:
        wait_for(healed, 3 * HOLD_LEASE, "holds and slots healed")
    except AssertionError:
        raise AssertionError(f"not healed within {3 * HOLD_LEASE} s: {left()}") from None
    ledger = UsageRecord.objects.filter(tenant=party.tenant).aggregate(total=Sum("cost_picos"))["total"] or 0
    assert budgets.status(budget).spent_picos == ledger


# --- 1. A worker killed mid-batch.


def lines_done(part: BatchPart) -> int:
    return BatchLine.objects.filter(batch_id=part.batch_id, state="succeeded", index__gte=part.first_line,
                                    index__lt=part.last_line).count()


def part_of(pool: list[int], batch: Batch) -> BatchPart | None:
    """The part a process of ``pool`` runs, once a few of its lines are done (so more are in flight)."""
    for part in BatchPart.objects.filter(batch=batch, state="running").exclude(worker=""):
        if pid_of(part) in pool and lines_done(part) >= PART_LINES // 4:
            return part
    return None


@pytest.mark.parametrize("victim", ["main", "child"])
def test_a_worker_killed_mid_batch_loses_no_line_and_runs_none_twice(alice: Party, tmp_path: Path, victim: str) -> None:
    """SIGKILL a worker's main process (its prefork child dies with it, as when a host is lost): a second worker,
    busy with parts of its own, takes the dead one's part over once its lease ran out. Or SIGKILL only the pool
    child running a part: the worker's next child takes it over."""
    recorder = Recorder()
    env = base_env(tmp_path)
    tend_every_second()
    with upstream(recorder) as upstream_url:
        add_route(upstream_url)
        # Beat runs in the worker that lives: the second one, or the first when only its pool child is killed.
        with (tollgate_server(connection.settings_dict["NAME"], tmp_path / "server.log", **env) as url,
              worker("first", tmp_path, env, beat=victim == "child") as first,
              worker("second", tmp_path, env, beat=True) if victim == "main" else nullcontext() as second):
            batch = create_batch(url, alice)
            part = first_found(lambda: part_of(children(first.pid), batch), 60,
                               "the first worker a part under way\n" + tails(tmp_path))
            child = pid_of(part)
            os.kill(first.pid if victim == "main" else child, signal.SIGKILL)
            wait_for(lambda: gone(child), 10, "the pool child gone")
            # The lines the dead process had claimed and not finished: in flight at the kill. A second later: a claim
            # whose COMMIT reached PostgreSQL just before the kill is committed by then. (The part's lease, renewed
            # every third of it, has at least two thirds left: the part is not given up yet.)
            time.sleep(1.0)
            in_flight = set(BatchLine.objects.filter(batch=batch, state="running", index__gte=part.first_line,
                                                     index__lt=part.last_line).values_list("custom_id", flat=True))
            assert in_flight, "nothing was in flight at the kill"
            assert lines_done(part) < part.last_line - part.first_line
            batch = finish(batch, 90, tmp_path)
            # The dead part was taken over by a live process: the other worker's, or the same worker's next child.
            part.refresh_from_db()
            survivor = second if victim == "main" else first
            assert part.state == "done" and pid_of(part) != child and pid_of(part) in children(survivor.pid)
            if victim == "child":
                assert first.poll() is None  # the worker itself lives on
            result = outcome(url, alice, batch, recorder)
            journal_replayed(tmp_path, child)
    no_journal_left(tmp_path)
    assert batch.status == "completed"
    # The lines in flight at the kill failed as lost, and only they: every other line succeeded.
    assert set(result.errors) == in_flight
    for c in in_flight:
        assert result.errors[c]["response"] is None
        assert result.errors[c]["error"]["code"] == "batch_worker_lost", result.errors[c]
        assert result.errors[c]["error"]["message"]
    assert len(result.output) == LINES - len(in_flight)
    # A lost line that reached the provider was closed from the dead process's journal (gateway_lost), or had
    # ended and been journaled before its result was saved (complete): one row either way, billed.
    arrived = recorder.counts()
    lost_rows = [result.rows[c] for c in in_flight if c in result.rows]
    assert {c for c in in_flight if arrived[c]} <= {r.custom_id for r in lost_rows}
    assert {r.end_reason for r in lost_rows} <= {"gateway_lost", "complete"}
    assert "gateway_lost" in {r.end_reason for r in lost_rows}
    assert all(r.cost_picos > 0 for r in lost_rows)


# --- 2. Redis and PostgreSQL blips.


def run_through_blip(party: Party, tmp_path: Path, proxy: FaultProxy, env: dict[str, str]) -> tuple[Batch, Outcome]:
    """Run the batch on one worker, cut the proxy for CUT seconds once a fifth of it is done, and let it finish."""
    recorder = Recorder()
    tend_every_second()
    with upstream(recorder) as upstream_url:
        add_route(upstream_url)
        with tollgate_server(connection.settings_dict["NAME"], tmp_path / "server.log", **env) as url:
            with worker("only", tmp_path, env, beat=True):
                batch = create_batch(url, party)
                wait_for(lambda: succeeded(batch) >= LINES // 5, 60, "a fifth done\n" + tails(tmp_path))
                proxy.cut()
                time.sleep(CUT)
                proxy.restore()
                assert succeeded(batch) < LINES, "the batch ended before the blip: make it slower"
                batch = finish(batch, 90, tmp_path)
                result = outcome(url, party, batch, recorder)
    no_journal_left(tmp_path)
    return batch, result


def reason_of(line: dict[str, Any]) -> str:
    """Why a line of the error file failed: its status and error code, or the code of a line that never ran."""
    if line["response"] is not None:
        error = line["response"]["body"]["error"]
        return f"{line['response']['status_code']} {error['code'] or error['type']}"
    return str(line["error"]["code"])


def test_a_redis_blip_mid_batch_bills_every_line_once(alice: Party, tmp_path: Path) -> None:
    redis_url = urlsplit(os.environ["REDIS_URL"])
    with FaultProxy(redis_url.port or 6379) as proxy:
        # Redis is the budget state, the rate limits and the broker, all through the proxy.
        env = {**base_env(tmp_path), "REDIS_URL": f"redis://127.0.0.1:{proxy.port}{redis_url.path}"}
        batch, result = run_through_blip(alice, tmp_path, proxy, env)
    assert batch.status == "completed"
    # A line the gate refuses while Redis is away waits and asks again (batches/lines.py, up to 30 s): none fails.
    assert not result.errors, result.failures()
    assert len(result.output) == batch.completed == LINES


def test_a_database_blip_mid_batch_bills_every_line_once(alice: Party, tmp_path: Path) -> None:
    database = connection.settings_dict
    with FaultProxy(int(database["PORT"] or 5432)) as proxy:
        env = {**base_env(tmp_path),
               "DATABASE_URL": f"postgres://{database['USER']}@127.0.0.1:{proxy.port}/{database['NAME']}",
               "TOLLGATE_ROUTES_CACHE_SECONDS": "60", "TOLLGATE_KEY_CACHE_SECONDS": "120"}
        batch, result = run_through_blip(alice, tmp_path, proxy, env)
    assert batch.status == "completed"
    # Ledger rows are spooled through the outage, claims and results saved again once it is over: none fails.
    assert not result.errors, result.failures()
    assert len(result.output) == batch.completed == LINES


# --- 3. A claim whose answer was lost.


def test_a_claim_committed_just_before_the_connection_broke_still_runs_its_lines(
        alice: Party, mock_upstream_url: str, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one window a short blip can hit that the live test above meets about once in twenty runs: PostgreSQL
    commits the claim's INSERT, and the connection breaks before its answer reaches the worker. The runner tries the
    claim again; the lines it claimed must still run, once each."""
    from batches import leases, runner
    from proxy import routing

    from ..batches.running import line, read_file, rows_of, running_batch

    settings.TOLLGATE_ROUTES_CACHE_SECONDS = 0
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    Price.objects.create(model="mock", input_per_million=Decimal("100"), output_per_million=Decimal("200"))
    routing.invalidate()
    batch = running_batch(alice, [line(f"l{i}") for i in range(4)])
    claim_lines = leases.claim_lines
    claims: list[dict[int, int]] = []

    def answer_lost_once(*args: Any) -> dict[int, int]:
        claimed = claim_lines(*args)  # committed
        claims.append(claimed)
        if len(claims) == 1:
            raise OperationalError("consuming input failed: server closed the connection unexpectedly")
        return claimed

    monkeypatch.setattr(leases, "claim_lines", answer_lost_once)
    runner.run_part(batch.part_rows.get().pk)
    batch.refresh_from_db()
    assert claims[0], "the first claim claimed nothing"
    errors = read_file(batch.error_file)
    assert (batch.status, batch.completed, batch.failed) == ("completed", 4, 0), [e["error"] for e in errors]
    assert [r.custom_id for r in rows_of(batch)] == ["l0", "l1", "l2", "l3"]
