"""``bench/run.py --workers N``: the same load through one uvicorn worker and through N, side by side, in one run.

A second Tollgate server runs N uvicorn workers (unpinned; each with its own SO_REUSEPORT socket on one port, see
LAUNCH) with the first one's environment, so it serves the same keys. At each concurrency the plain and the
gated key go to the one-worker server and to the N-worker one in turn; CPU per request counts every worker (the
CPU of the server's whole process tree), and each worker's share of it shows that all of them served. Then the
exactness checks across workers: a fresh key limited to RATE_LIMIT requests per minute gets RATE_SENT requests in
one minute window through the N-worker server and must be answered exactly RATE_LIMIT times 200 and 429 for the
rest, with one ledger row per request either way. Each worker's admissions are read from its own journal file (the
begin lines of that key's tenant), so the table shows how the admissions were shared. The gated key's budgets take
the N-worker server's requests too, so the run's money check (budget totals = ledger, nothing held) covers them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from bench.data import BenchError, run_django
from bench.load import REQUEST_ERRORS, Connection, Request

if TYPE_CHECKING:
    from bench.run import Bench, Children, Server

PYTHON = sys.executable
NAME = "tollgate-workers"  # the N-worker server's name among the run's children
RATE_LIMIT = 60  # requests per minute on the rate-limited key
RATE_SENT = 3 * RATE_LIMIT
RATE_CONCURRENCY = 16
RATE_MARGIN_SECONDS = 10.0  # the burst starts with at least this much of its minute window left

# N uvicorn servers on one port, each with its own SO_REUSEPORT socket, under one supervisor. `uvicorn --workers N`
# shares one listening socket instead, and hands the 16 keep-alive connections a phase opens at once to whichever
# worker wakes first: in this bench one worker took every connection (its CPU share read [0, 100]), so two workers
# measured one. With a socket each, the kernel spreads new connections over the servers by their address hash.
LAUNCH = """
import signal, subprocess, sys

port, workers = sys.argv[1], int(sys.argv[2])
serve = '''
import socket, sys
import uvicorn

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(2048)
config = uvicorn.Config("gateway_site.asgi:application", lifespan="off", access_log=False, log_level="info")
uvicorn.Server(config).run(sockets=[sock])
'''
children = [subprocess.Popen([sys.executable, "-c", serve, port]) for _ in range(workers)]
signal.signal(signal.SIGTERM, lambda *_: [child.terminate() for child in children])
for child in children:
    child.wait()
"""

RATE_SEED = """
import json, os, sys
import django
django.setup()
from accounts.models import ApiKey
from accounts.services import create_tenant, issue_key

slug, limit, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tenant = create_tenant(name="Benchmark rate " + slug, slug=slug)
key, secret = issue_key(tenant=tenant, name="bench rate")
ApiKey.objects.filter(pk=key.pk).update(requests_per_minute=limit)
with open(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handoff:
    json.dump({"key": secret, "tenant_id": tenant.pk}, handoff)
"""


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process so far, 0 if it is gone. Fields follow the ')' closing the command name."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """The live direct children of a process."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(entry.name))
    return sorted(found)


def process_tree(pid: int) -> Iterator[int]:
    """The process and all its live descendants."""
    yield pid
    for child in children_of(pid):
        yield from process_tree(child)


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its descendants: the supervisor and its N workers."""
    return sum(process_cpu_seconds(p) for p in process_tree(pid))


def workers_of(pid: int) -> list[int]:
    """The serving workers of a supervisor (multiprocessing's helpers left out, for ``uvicorn --workers N``)."""
    found = []
    for child in children_of(pid):
        try:
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
    return found


@dataclass
class Fleet:
    """The N-worker server, its plain and gated twins of the one-worker servers, and the rate-limited key."""

    workers: int
    journal_dir: Path
    plain: Server
    gated: Server
    rate: Server
    rate_tenant_id: int
    answers: int = 0  # requests the rate check sent that got an answer: one ledger row each

    @property
    def servers(self) -> tuple[Server, Server]:
        return (self.plain, self.gated)


def start(children: Children, env: dict[str, str], tollgate: Server, gated: Server, workers: int) -> Fleet:
    """Seed the rate-limited key, start N uvicorn workers with ``env`` (the one-worker server's secrets) and
    wait until every worker has started."""
    key, tenant_id = seed_rate_limited(env)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    journal_dir = children.log_dir / "journal-workers"  # its own: each worker's begin lines are read from it
    # Info level for the "Started server process" line of each worker; the access log stays off.
    children.start(NAME, [PYTHON, "-c", LAUNCH, str(port), str(workers)], {**env, "TOLLGATE_JOURNAL_DIR": str(journal_dir)})
    base = f"http://127.0.0.1:{port}"
    children.wait_until_up(NAME, f"{base}/v1/models")
    wait_for_workers(children, workers)
    pid = children.procs[NAME].pid
    # The one-worker servers' twins: same keys, this server's address and process.
    plain = dataclasses.replace(tollgate, name=f"{workers}w plain", url=f"{base}/v1/chat/completions", pid=pid)
    rate = dataclasses.replace(plain, name=f"{workers}w rate", headers={**plain.headers, "authorization": f"Bearer {key}"})
    progress(f"workers  {workers} uvicorn workers up: {workers_of(pid)}")
    return Fleet(workers, journal_dir, plain, dataclasses.replace(plain, name=f"{workers}w gated", headers=gated.headers),
                 rate, tenant_id)


def seed_rate_limited(env: dict[str, str]) -> tuple[str, int]:
    """A fresh tenant with one key limited to RATE_LIMIT requests per minute. Returns the key and the tenant id."""
    slug = f"bench-rate-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory() as private:
        handoff = Path(private) / "rate.json"
        run_django(["-c", RATE_SEED, slug, str(RATE_LIMIT), str(handoff)], env, "seeding the rate-limited key")
        seeded = json.loads(handoff.read_text())
    return seeded["key"], int(seeded["tenant_id"])


def wait_for_workers(children: Children, workers: int, timeout: float = 60.0) -> None:
    """Return once every worker logged that it started. Raises BenchError if the server dies or is too slow."""
    proc, deadline = children.procs[NAME], time.monotonic() + timeout
    while (children.log_dir / f"{NAME}.log").read_text(errors="replace").count("Started server process") < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{NAME}: {workers} workers did not start within {timeout:.0f} s:\n{children.tail(NAME)}")
        time.sleep(0.1)


async def measure(bench: Bench, fleet: Fleet) -> dict[str, Any]:
    """Plain and gated load through one worker and through N at each concurrency, alternating; then the rate check."""
    pairs = ((bench.tollgate, fleet.plain), (bench.gated, fleet.gated))
    phases = []
    for concurrency in bench.opts.concurrency:
        for one, many in pairs:
            phases.append(await bench.phase(one, concurrency))
            before = {pid: process_cpu_seconds(pid) for pid in workers_of(many.pid)}
            summary = await bench.phase(many, concurrency)
            used = {pid: process_cpu_seconds(pid) - cpu for pid, cpu in before.items()}
            total = sum(used.values())
            # Warm-up included: it shows that every worker served, not what each one costs.
            summary["worker_cpu_share"] = [round(cpu / total * 100) if total else 0 for cpu in used.values()]
            phases.append(summary)
    rate = await rate_limit_burst(fleet)
    rate["ledger"] = await asyncio.to_thread(ledger_statuses, bench.opts.database_url, fleet.rate_tenant_id, fleet.answers)
    progress(f"workers  rate limit {rate['limit']}/min: {rate['admitted']} admitted of {rate['sent']} across "
             f"{fleet.workers} workers {rate['admitted_by_worker']}, {rate['refused']} refused, {rate['other']} other")
    return {"workers": fleet.workers, "phases": phases, "rate_limit": rate}


async def rate_limit_burst(fleet: Fleet) -> dict[str, Any]:
    """RATE_SENT requests on the rate-limited key at RATE_CONCURRENCY, within one minute window."""
    left = 60.0 - time.time() % 60.0  # the limits' windows are fixed minutes (proxy/ratelimits.py)
    if left < RATE_MARGIN_SECONDS:
        await asyncio.sleep(left + 0.2)
    # A new connection per request: the kernel hands each to whichever worker accepts first, so the admissions are
    # shared between the workers instead of following 16 long-lived connections that one worker may have taken.
    request = Request.post(fleet.rate.url, headers={**fleet.rate.headers, "connection": "close"}, body=rate_body())
    statuses: dict[str, int] = {}
    queue = iter(range(RATE_SENT))

    async def worker(connection: Connection) -> None:
        for _ in queue:
            try:
                status = str((await connection.send(request)).status)
            except REQUEST_ERRORS as e:
                status = type(e).__name__
            statuses[status] = statuses.get(status, 0) + 1

    connections = [Connection(request.host, request.port) for _ in range(RATE_CONCURRENCY)]
    try:
        await asyncio.gather(*(worker(connection) for connection in connections))
    finally:
        for connection in connections:
            connection.close()
    fleet.answers += sum(count for status, count in statuses.items() if status.isdigit())
    admitted, refused = statuses.get("200", 0), statuses.get("429", 0)
    return {"limit": RATE_LIMIT, "sent": RATE_SENT, "admitted": admitted, "refused": refused,
            "other": RATE_SENT - admitted - refused, "statuses": statuses,
            "admitted_by_worker": await asyncio.to_thread(admitted_by_worker, fleet.journal_dir, fleet.rate_tenant_id),
            "exact": admitted == RATE_LIMIT and refused == RATE_SENT - RATE_LIMIT}


def rate_exact(rate: dict[str, Any]) -> bool:
    """The clients saw exactly the limit admitted, and the ledger holds a row for each request, as many of them 200."""
    return rate["exact"] and rate["ledger"] == {"rows": rate["sent"], "admitted": rate["limit"]}


def ledger_statuses(database_url: str, tenant_id: int, expected: int) -> dict[str, int]:
    """The tenant's ledger rows and, of those, the ones answered 200, once all ``expected`` rows are in (or 3 s pass)."""
    deadline = time.monotonic() + 3.0
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*), count(*) FILTER (WHERE status_code = 200) FROM billing_usagerecord "
                               "WHERE tenant_id = %s", (tenant_id,)).fetchone()
            rows, admitted = (int(row[0]), int(row[1])) if row else (0, 0)
            if rows >= expected or time.monotonic() > deadline:
                return {"rows": rows, "admitted": admitted}
            time.sleep(0.2)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rate_body() -> bytes:
    return json.dumps({"model": "mock", "messages": [{"role": "user", "content": "Say hello."}]}).encode()


def admitted_by_worker(journal_dir: Path, tenant_id: int) -> list[int]:
    """Per worker process, the tenant's requests its journal says it admitted (a begin line is written on admission).

    A journal file is named host-pid-id-segment.journal; a process's files stay while it lives (under 32 MB each)."""
    counts: dict[str, int] = {}
    for path in journal_dir.glob("*.journal"):
        pid = path.name.rsplit("-", 3)[1]
        with path.open("rb") as lines:
            for line in lines:
                if b'"t":"b"' in line and json.loads(line).get("tenant_id") == tenant_id:
                    counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


def lines(results: dict[str, Any]) -> list[str]:
    """The table's part: requests/s and CPU per request through 1 and N workers, and the rate check."""
    n = results["workers"]
    phases = {(p["target"], p["concurrency"]): p for p in results["phases"]}
    out = [f"workers: the same load through 1 uvicorn worker and through {n} (unpinned), alternating",
           f"  {'':<26}{'1 worker':>12}{f'{n} workers':>14}{f'{n}w / 1w':>16}"]
    for concurrency in sorted({c for _, c in phases}):
        for kind, one_name in (("plain", "tollgate"), ("gated", "gated")):
            one, many = phases[(one_name, concurrency)], phases[(f"{n}w {kind}", concurrency)]
            ratio = f"{many['rps'] / one['rps']:.2f}x" if one["rps"] else ""
            out += [f"  c={concurrency} {kind}",
                    f"  {'  requests/s':<26}{one['rps']:>12.1f}{many['rps']:>14.1f}{ratio:>16}",
                    f"  {'  CPU ms/request (all)':<26}{one['cpu_ms_per_request'] or 0:>12.3f}"
                    f"{many['cpu_ms_per_request'] or 0:>14.3f}",
                    f"  {'  p50 latency ms':<26}{fmt(one['p50_ms']):>12}{fmt(many['p50_ms']):>14}",
                    f"  {'  p99 latency ms':<26}{fmt(one['p99_ms']):>12}{fmt(many['p99_ms']):>14}",
                    f"  {'  errors':<26}{one['errors']:>12}{many['errors']:>14}",
                    f"  {'  CPU share per worker %':<26}{'':>12}{str(many['worker_cpu_share']):>14}"]
    rate = results["rate_limit"]
    verdict = "OK" if rate_exact(rate) else "MISMATCH"
    if len(rate["admitted_by_worker"]) < 2:
        verdict += " (one worker admitted them all this time: not a check across workers)"
    out.append(f"  rate limit {rate['limit']}/min on one key, {rate['sent']} requests through {n} workers: "
               f"{rate['admitted']} admitted (by worker {rate['admitted_by_worker']}), {rate['refused']} refused 429, "
               f"{rate['other']} other; ledger {rate['ledger']['rows']} rows, {rate['ledger']['admitted']} of them 200"
               f"  {verdict}")
    return out


def fmt(value: object) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def failed(results: dict[str, Any]) -> bool:
    """Any failed request in the comparison, or a rate limit that did not hold exactly across the workers."""
    return any(p["errors"] for p in results["phases"]) or not rate_exact(results["rate_limit"])
