"""``bench/run.py --batch N``: a chat batch of N lines on one Celery worker process, beside interactive /v1 traffic.

A tenant of its own (a month budget on the tenant, a day budget on its key, rate limits far above the run's use, so
every line is gated and charged) uploads N chat lines with custom ids through /v1/files and creates a batch through
/v1/batches, as an OpenAI SDK would. The mock's price gives batch lines BATCH_DISCOUNT percent off. ONE Celery
worker process (one prefork child; the lines run concurrently on its event loop, TOLLGATE_BATCH_CONCURRENCY of the
queue in flight) consumes the three tier queues, highest first.

First a warm-up batch of WARMUP_LINES lines runs to the end (the worker's child imports, connects and fills its
caches on its first lines). Then interactive plain requests at c=16 go through Tollgate for a phase before the
measured batch is created, all the time it runs, and for a phase after it ends: the requests in flight while the
batch ran (created to completed) against those of the phases before and after it together (equally long, so a
steady drift of the machine cancels out). The issue's target is a p50 rise of at most 15 %; it is reported, not asserted, as every timing of
the bench. Lines/s is measured under that interactive load, from the first line claimed to the last one finished
(the BatchLine rows' times) and end to end (created to completed, polled); CPU ms per line is the worker's process
tree (utime+stime from created to completed: validation and the output file included). PostgreSQL's and Redis's
own CPU are not in it.

Afterwards the run fails unless the batch completed with every line succeeded, the ledger holds exactly one row per
line with the batch's id (and the tenant no rows but its two batches'), the output file has every custom id once,
and each budget's running total equals the ledger's cost with nothing reserved or held. The files are deleted.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psycopg

from bench.data import BenchError, Seeded, check_money, run_django
from bench.load import Phase, Pool, hammer, overlapping
from bench.workers import tree_cpu_seconds

if TYPE_CHECKING:
    from bench.run import Bench, Children, Server

PYTHON = sys.executable
NAME = "batch-worker"  # the worker's name among the run's children
CONCURRENCY = 16  # interactive requests in flight beside the batch
SLICE_SECONDS = 1.0  # the interactive load beside the batch runs in slices this long until the batch ends
POLL_SECONDS = 0.2
STALL_SECONDS = 60.0  # the run fails when no line of the batch finishes for this long
WARMUP_LINES = 64  # a batch run to the end before anything is measured
BATCH_DISCOUNT = 50  # percent off the mock's price for batch lines (billing's Price.batch_discount_percent)
P50_TARGET_PERCENT = 15.0
LINE_BODY = {"model": "mock", "messages": [{"role": "user", "content": "Say hello."}]}  # as bench/run.py's plain request
TERMINAL = ("completed", "failed", "expired", "cancelled")

SEED_SCRIPT = """
import json, os, sys
from decimal import Decimal
import django
django.setup()
from django.conf import settings
from accounts.models import ApiKey, Tenant
from accounts.services import create_tenant, issue_key
from billing.models import Budget, Price

slug, discount, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
Price.objects.filter(model="mock", provider=None).update(batch_discount_percent=Decimal(discount))
tenant = create_tenant(name="Benchmark batch " + slug, slug=slug)
Tenant.objects.filter(pk=tenant.pk).update(requests_per_minute=10**9, tokens_per_minute=2 * 10**9, max_concurrent=10**4)
key, secret = issue_key(tenant=tenant, name="bench batch")
ApiKey.objects.filter(pk=key.pk).update(requests_per_minute=10**9, tokens_per_minute=2 * 10**9, max_concurrent=10**4)
budgets = [Budget.objects.create(tenant=tenant, amount=Decimal("1000000"), period="month", name="batch month"),
           Budget.objects.create(tenant=tenant, key=key, amount=Decimal("1000000"), period="day", name="batch key day")]
queue = settings.TOLLGATE_QUEUES[Tenant.objects.get(pk=tenant.pk).batch_tier]
queues = [settings.TOLLGATE_QUEUES[tier] for tier in ("high", "default", "low")]
with open(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handoff:
    json.dump({"key": secret, "tenant_id": tenant.pk, "budget_ids": [b.pk for b in budgets], "queue": queue,
               "queues": queues, "in_flight": settings.TOLLGATE_BATCH_CONCURRENCY[queue],
               "per_minute": settings.TOLLGATE_BATCH_RATES.get(queue)}, handoff)
"""


def run_queues() -> dict[str, str]:
    """The tier queues' names for one run (settings TOLLGATE_QUEUE_*): a batch task that an interrupted run left in
    the broker never reaches this run's worker."""
    run_id = secrets.token_hex(3)
    return {f"TOLLGATE_QUEUE_{tier}": f"bench-{run_id}-{tier.lower()}" for tier in ("HIGH", "DEFAULT", "LOW")}


@dataclass(frozen=True)
class Rig:
    """The batch tenant, its key, and the worker that runs its lines."""

    lines: int
    base: str  # Tollgate's root URL
    key: str
    tenant_id: int
    budget_ids: list[int]
    queue: str  # the tenant's tier queue
    in_flight: int  # lines in flight per worker process on that queue
    per_minute: int | None  # lines started per minute on that queue (None: no pace)
    worker: subprocess.Popen[bytes]
    worker_log: Path


def start(children: Children, env: dict[str, str], tollgate: Server, lines: int) -> Rig:
    """Seed the batch tenant and start one Celery worker (one prefork child) on the tier queues, with ``env``
    (Tollgate's own settings and secrets)."""
    slug = f"bench-batch-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory() as private:
        handoff = Path(private) / "batch.json"
        run_django(["-c", SEED_SCRIPT, slug, str(BATCH_DISCOUNT), str(handoff)], env, "seeding the batch tenant")
        seeded = json.loads(handoff.read_text())
    worker = children.start(NAME, [PYTHON, "-m", "celery", "-A", "gateway_site", "worker", "--queues",
                                   ",".join(seeded["queues"]), "--concurrency", "1", "--pool", "prefork",
                                   "--hostname", f"bench-batch-{secrets.token_hex(3)}@%h", "--without-gossip",
                                   "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"], env)
    deadline = time.monotonic() + 60
    while " ready." not in (children.log_dir / f"{NAME}.log").read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{NAME} did not get ready within 60 s:\n{children.tail(NAME)}")
        time.sleep(0.1)
    root = urlsplit(tollgate.url)
    return Rig(lines, f"{root.scheme}://{root.netloc}", seeded["key"], int(seeded["tenant_id"]), seeded["budget_ids"],
               seeded["queue"], int(seeded["in_flight"]), seeded["per_minute"], worker, children.log_dir / f"{NAME}.log")


def api(rig: Rig, method: str, path: str, body: bytes | None = None, content_type: str = "application/json") -> Any:
    """One call to Tollgate's /v1 with the batch key; the decoded JSON (or the bytes of a file's content)."""
    request = urllib.request.Request(f"{rig.base}{path}", data=body, method=method,
                                     headers={"authorization": f"Bearer {rig.key}", "content-type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read()
    except urllib.error.HTTPError as e:
        raise BenchError(f"{method} {path}: HTTP {e.code}: {e.read()[:500].decode(errors='replace')}") from None
    return data if path.endswith("/content") else json.loads(data)


def input_file(lines: int) -> bytes:
    return b"".join(json.dumps({"custom_id": f"line-{i:05d}", "method": "POST", "url": "/v1/chat/completions",
                                "body": LINE_BODY}).encode() + b"\n" for i in range(lines))


def upload(rig: Rig, lines: int) -> str:
    """POST /v1/files (multipart, purpose batch) as the SDKs send it; returns the file id."""
    boundary = secrets.token_hex(16)
    body = (f"--{boundary}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"bench.jsonl\"\r\n"
            f"content-type: application/octet-stream\r\n\r\n").encode() + input_file(lines) + f"\r\n--{boundary}--\r\n".encode()
    return str(api(rig, "POST", "/v1/files", body, f"multipart/form-data; boundary={boundary}")["id"])


def create(rig: Rig, file_id: str) -> str:
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
            "metadata": {"purpose": "benchmark"}}
    return str(api(rig, "POST", "/v1/batches", json.dumps(body).encode())["id"])


@dataclass
class Watch:
    """Polls the batch's status in the database (so the polling costs Tollgate nothing) until it ends."""

    rig: Rig
    database_url: str
    batch_id: str
    started: float  # perf_counter just before the batch was created
    cpu_before: float
    status: str = ""
    ended: float = 0.0
    cpu: float = 0.0

    async def run(self) -> None:
        done, moved = -1, time.perf_counter()
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while True:
                row = await asyncio.to_thread(lambda: conn.execute(
                    "SELECT status, completed + failed FROM batches_batch WHERE public_id = %s", (self.batch_id,)).fetchone())
                self.status = row[0] if row else "missing"
                if self.status in TERMINAL:
                    self.ended, self.cpu = time.perf_counter(), tree_cpu_seconds(self.rig.worker.pid) - self.cpu_before
                    return
                if row and row[1] != done:
                    done, moved = row[1], time.perf_counter()
                if time.perf_counter() - moved > STALL_SECONDS or self.rig.worker.poll() is not None:
                    log = self.rig.worker_log.read_text(errors="replace").splitlines()[-30:]
                    raise BenchError(f"batch {self.batch_id} is {self.status} with {max(done, 0)} of {self.rig.lines} "
                                     f"lines done and none finished for {STALL_SECONDS:.0f} s (or its worker died); "
                                     "the worker's log ends:\n" + "\n".join(log))
                await asyncio.sleep(POLL_SECONDS)


def merged(phases: list[Phase], target: str) -> Phase:
    """One phase holding every request of ``phases``."""
    out = Phase(target=target, concurrency=CONCURRENCY)
    for phase in phases:
        out.seconds += phase.seconds
        out.ok, out.errors, out.exceptions = out.ok + phase.ok, out.errors + phase.errors, out.exceptions + phase.exceptions
        out.first_error = out.first_error or phase.first_error
        out.latencies_ms += phase.latencies_ms
        out.spans += phase.spans
        out.overheads_ms += phase.overheads_ms
    return out


async def warm_up(bench: Bench, rig: Rig) -> str:
    """Run a small batch to the end and delete its files; returns its id. The worker's child imports, connects and
    fills its caches on its first lines, as a web process does on its first requests, and a measured batch of a few
    lines would mostly measure that."""
    batch_id = await asyncio.to_thread(create, rig, await asyncio.to_thread(upload, rig, WARMUP_LINES))
    await Watch(rig, bench.opts.database_url, batch_id, time.perf_counter(), 0.0).run()
    ended = await asyncio.to_thread(api, rig, "GET", f"/v1/batches/{batch_id}")
    if ended["status"] != "completed":
        raise BenchError(f"the warm-up batch {batch_id} ended {ended['status']}: {ended['request_counts']}")
    for name in ("input_file_id", "output_file_id", "error_file_id"):
        if ended.get(name):
            await asyncio.to_thread(api, rig, "DELETE", f"/v1/files/{ended[name]}")
    return batch_id


async def measure(bench: Bench, rig: Rig) -> dict[str, Any]:
    """Interactive load before, beside and after the batch; then the batch's counts, ledger rows and money."""
    warmup_id = await warm_up(bench, rig)
    file_id = await asyncio.to_thread(upload, rig, rig.lines)
    server, seconds = bench.tollgate, bench.opts.seconds
    web_cpu: dict[str, float] = {}  # Tollgate's web process: it serves the interactive load and does no batch work
    async with Pool(server.request(json.dumps(LINE_BODY).encode()), CONCURRENCY) as pool:
        bench.count(await hammer(pool, seconds=1.0, target=server.name), server)  # warm-up
        mark = tree_cpu_seconds(server.pid)
        before = await hammer(pool, seconds=seconds, target=server.name)
        web_cpu["before"], mark = spent(server.pid, mark)
        started, worker_cpu = time.perf_counter(), tree_cpu_seconds(rig.worker.pid)
        watch = Watch(rig, bench.opts.database_url, await asyncio.to_thread(create, rig, file_id), started, worker_cpu)
        watching, slices = asyncio.ensure_future(watch.run()), []
        while not watching.done():
            slices.append(await hammer(pool, seconds=SLICE_SECONDS, target=server.name))
        await watching  # raises what the watch raised
        web_cpu["beside"], mark = spent(server.pid, mark)
        after = await hammer(pool, seconds=seconds, target=server.name)
        web_cpu["after"], _ = spent(server.pid, mark)
    for phase in (before, *slices, after):
        bench.count(phase, server)
    without, beside_all = merged([before, after], "without batch"), merged(slices, "with batch")
    window = Phase(target="batch", concurrency=1, spans=[(watch.started, watch.ended)])
    beside = overlapping(beside_all, window)  # the requests in flight while the batch ran
    beside.seconds, beside.errors, beside.first_error = watch.ended - watch.started, beside_all.errors, beside_all.first_error
    interactive = {"without": without.summary(), "with": beside.summary()}
    interactive["without"]["web_cpu_ms_per_request"] = per(web_cpu["before"] + web_cpu["after"], without.ok)
    interactive["with"]["web_cpu_ms_per_request"] = per(web_cpu["beside"], beside_all.ok)
    results = await asyncio.to_thread(outcome, bench, rig, watch, file_id)
    results["warmup_rows"] = await asyncio.to_thread(count_rows, bench.opts.database_url, warmup_id)
    results["interactive"] = interactive
    a, b = interactive["without"]["p50_ms"], interactive["with"]["p50_ms"]
    results["p50_rise_percent"] = round((b - a) / a * 100, 1) if a and b is not None else None
    results["lines_per_second"] = {"run": per_second(rig.lines, results["line_seconds"]),
                                   "end_to_end": per_second(rig.lines, watch.ended - watch.started)}
    results["worker_cpu_ms_per_line"] = per(watch.cpu, rig.lines, digits=3)
    progress(f"batch    {rig.lines} lines {results['status']} in {watch.ended - watch.started:.1f} s, "
             f"{results['rows']} ledger rows; interactive p50 {a} ms without, {b} ms with")
    return results


def spent(pid: int, since: float) -> tuple[float, float]:
    """CPU seconds the process tree used since ``since`` (an earlier reading), and the new reading."""
    now = tree_cpu_seconds(pid)
    return now - since, now


def per(seconds: float, count: int, digits: int = 3) -> float | None:
    return round(seconds * 1000 / count, digits) if count else None


def per_second(count: int, seconds: float | None) -> float | None:
    return round(count / seconds, 1) if seconds else None


def outcome(bench: Bench, rig: Rig, watch: Watch, file_id: str) -> dict[str, Any]:
    """What the batch left: its counts, its lines' span, its ledger rows, its output file, and the money."""
    batch = api(rig, "GET", f"/v1/batches/{watch.batch_id}")
    with psycopg.connect(bench.opts.database_url, autocommit=True) as conn:
        span = conn.execute("SELECT extract(epoch FROM max(l.finished_at) - min(l.created_at)) FROM batches_batchline l "
                            "JOIN batches_batch b ON b.id = l.batch_id WHERE b.public_id = %s", (watch.batch_id,)).fetchone()
        deadline = time.monotonic() + 3.0
        while True:  # rows are in before the batch completes; a short wait costs nothing if one is late
            rows, custom_ids, ok, cost, costs = conn.execute(
                "SELECT count(*), count(DISTINCT custom_id), count(*) FILTER (WHERE status_code = 200), "
                "coalesce(sum(cost_picos), 0), array_agg(DISTINCT cost_picos) FROM billing_usagerecord "
                "WHERE batch_id = %s", (watch.batch_id,)).fetchone() or (0, 0, 0, 0, [])
            if rows >= rig.lines or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        tenant_rows = conn.execute("SELECT count(*) FROM billing_usagerecord WHERE tenant_id = %s",
                                   (rig.tenant_id,)).fetchone()
    output_ids: list[str] = []
    if batch.get("output_file_id"):
        content = api(rig, "GET", f"/v1/files/{batch['output_file_id']}/content")
        output_ids = [json.loads(line)["custom_id"] for line in content.splitlines() if line.strip()]
    for used in (file_id, batch.get("output_file_id"), batch.get("error_file_id")):
        if used:
            api(rig, "DELETE", f"/v1/files/{used}")
    money = check_money(bench.opts, Seeded(key="", tenant_id=0, gated_key="", gated_tenant_id=rig.tenant_id,
                                           budget_ids=rig.budget_ids))
    return {"lines": rig.lines, "warmup_lines": WARMUP_LINES, "queue": rig.queue, "in_flight": rig.in_flight, "per_minute": rig.per_minute, "status": batch["status"],
            "request_counts": batch["request_counts"], "error_file": bool(batch.get("error_file_id")),
            "line_seconds": float(span[0]) if span and span[0] is not None else None,
            "end_to_end_seconds": round(watch.ended - watch.started, 3),
            "rows": int(rows), "custom_ids": int(custom_ids), "rows_200": int(ok), "tenant_rows": int(tenant_rows[0]),
            "cost_picos_per_line": sorted(int(c) for c in costs or [] if c is not None), "discount_percent": BATCH_DISCOUNT,
            "output_lines": len(output_ids),
            "output_complete": sorted(output_ids) == [f"line-{i:05d}" for i in range(rig.lines)],
            "money": money}


def count_rows(database_url: str, batch_id: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM billing_usagerecord WHERE batch_id = %s", (batch_id,)).fetchone()
    return int(row[0]) if row else 0


def rows_exact(results: dict[str, Any]) -> bool:
    """Every line succeeded and has one ledger row and one output line; the tenant has no other rows than its two
    batches' (the warm-up's and the measured one's)."""
    n, counts, warmup = results["lines"], results["request_counts"], results["warmup_lines"]
    return (results["status"] == "completed" and counts == {"total": n, "completed": n, "failed": 0}
            and results["rows"] == results["custom_ids"] == results["rows_200"] == n
            and results["warmup_rows"] == warmup and results["tenant_rows"] == n + warmup
            and results["output_complete"] and not results["error_file"])


def money_exact(money: dict[str, Any]) -> bool:
    return bool(money["agrees"]) and not money["reserved_micros"] and not money["open_holds"]


def failed(results: dict[str, Any]) -> bool:
    """An interactive request failed, a line is missing or failed, or the money does not add up (not timings)."""
    errors = results["interactive"]["without"]["errors"] + results["interactive"]["with"]["errors"]
    return bool(errors) or not rows_exact(results) or not money_exact(results["money"])


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
