"""The benchmark of record: what Tollgate adds on top of an upstream that costs (almost) nothing.

Run from the repository root, with PostgreSQL and Redis up (nothing is fetched from the network):

    .venv/bin/python bench/run.py                  # 10 s per phase at concurrency 1, 16 and 64
    .venv/bin/python bench/run.py --quick          # 3 s per phase, one stream round
    .venv/bin/python bench/run.py --soak 300 --json var/bench.json
    .venv/bin/python bench/run.py --reference      # also streams through a bare Django forwarder
    .venv/bin/python bench/run.py --large-prompt   # also plain latency while 8 MB prompts go through the gate
    .venv/bin/python bench/run.py --metrics        # also CPU per request with Prometheus metrics on vs off
    .venv/bin/python bench/run.py --workers 2      # also the same load through two uvicorn workers, side by side
    .venv/bin/python bench/run.py --batch 10000    # also a 10,000-line batch on one Celery worker beside c=16 requests
    .venv/bin/python bench/run.py --no-dialects    # without the Responses/Messages phase (on by default)

It starts the mock upstream (bench/mock_upstream.py) and ONE uvicorn worker of Tollgate with production
settings (DEBUG off, throwaway secrets made per run) and full bookkeeping on PostgreSQL
(``--database-url``, else DATABASE_URL, else postgres://postgres@127.0.0.1:5432/tollgate_bench, created if
missing and migrated) and Redis (``--redis-url``, else REDIS_URL, else redis://127.0.0.1:6379/8). Seeded per
run: the routes ``mock`` and ``mock-slow`` pointing at the mock, with prices, and two fresh tenants with a key
each: a plain one (no budgets, no rate limits) and a gated one (a month budget on the tenant, a day budget on
the key and rate limits on both, all far above what the run uses, so every request is checked and admitted).

For each concurrency it measures the mock alone and the same request through Tollgate, after a 1 s
warm-up each: requests/s, p50/p99 latency, errors (any non-200 or exception), CPU ms per request of the
serving process (utime+stime from /proc), and the p50 of Tollgate's ``x-tollgate-overhead-ms`` header; then
the same through the gated key. The gate's cost is the gated figures minus the plain ones, same process.
Then waves of 16 concurrent ``mock-slow`` streams (20 chunks 50 ms apart): time to the first ``data:``
line and total stream time; with ``--reference`` the same waves also go through stock Django relaying
the stream with no gateway work at all (bench/bare_django.py), as a yardstick. With ``--large-prompt``, plain
requests at concurrency 16 are measured alone, then while one more client keeps POSTing a chat request whose
prompt is one word repeated to 8 MB with no spaces (the tokenizer's pathological case) to the gated key, so the
gate has to size it: the rise in p50/p99 is what sizing a huge prompt costs everyone else in that process.
Tollgate runs with TOLLGATE_METRICS off, as figures from before metrics existed did. With ``--metrics`` a second
Tollgate process with TOLLGATE_METRICS on serves the same plain key, and plain requests at concurrency 16 go to
the process with metrics off and the one with them on, alternating, four times each: the difference in CPU ms per
request is what the metrics cost; a scrape of the second process must count every request it answered.
With ``--workers N`` a server of N uvicorn workers serves the same keys, and the plain and gated load at each
concurrency goes to it and to the one-worker server in turn (bench/workers.py); then a key limited to 60 requests
per minute must get exactly 60 of 180 requests admitted across the N workers.
Then plain requests and hits of the response cache (one request sent again and again to ``mock-cached``, a route with
the cache on) alternate twice at concurrency 16 through the same process: the CPU per request of a hit beside the
plain path's.
Then the same question as a chat, a Responses and a Messages request to ``mock`` (both dialects translated to chat
and back), whole and streamed, at concurrency 16: each dialect's CPU per request beside chat's (bench/dialects.py).
With ``--batch N`` a batch of N chat lines runs on one Celery worker process while plain requests at concurrency 16
go on, against the same requests before and after it; its lines/s, CPU per line, rows and money (bench/batch.py).
It reports Tollgate's resident memory, optionally over a concurrency-16 soak,
and checks that the ledger holds one ``billing_usagerecord`` row per answered Tollgate request, and that
each gated budget's running total in Redis equals the gated tenant's ledger cost with nothing left reserved.

The load generator (bench/load.py: one kept-alive HTTP/1.1 connection per worker, about 0.1 ms of CPU per
request, reported in the table) runs in this process on the same machine and competes with both servers
for the 2 cores: read requests/s as a comparison between the columns, not as what either server does
alone. The run exits 2 if any request failed, a ledger row is missing or the money does not add up; nothing
is asserted on timings.
The API key travels from the seeding subprocess to this one through a private temporary file; it is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script, Python puts bench/ on sys.path but not the repository root
from bench.load import Phase, Pool, Request, averaged, hammer, overlapping, repeat_until, stream_rounds  # noqa: E402
from bench.data import BenchError, Seeded, check_money, count_ledger, ensure_database, run_django, seed  # noqa: E402
from bench.report import LARGE_PROMPT_CONCURRENCY, SOAK_CONCURRENCY, STREAM_CONCURRENCY, table  # noqa: E402
from bench import batch, cached, dialects, workers  # noqa: E402

PYTHON = sys.executable
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/tollgate_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
WARMUP_SECONDS = 1.0
MESSAGES = [{"role": "user", "content": "Say hello."}]
CHAT_BODY = json.dumps({"model": "mock", "messages": MESSAGES}).encode()
STREAM_BODY = json.dumps(
    {"model": "mock-slow", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
).encode()
LARGE_PROMPT_BYTES = 8 * 1024 * 1024  # under TOLLGATE_MAX_BODY_BYTES (10 MiB by default)
METRICS_CONCURRENCY, METRICS_ROUNDS = 16, 4  # --metrics: off and on, alternating, this many phases each
LARGE_PROMPT_PAUSE_SECONDS = 0.25  # between one 8 MB prompt's answer and the next, in the "one at a time" part
# One "word" with no spaces is a single pre-token to BPE, its slowest input.
LARGE_BODY = json.dumps(
    {"model": "mock", "messages": [{"role": "user", "content": "tollgate" * (LARGE_PROMPT_BYTES // 8)}]}
).encode()

@dataclass(frozen=True)
class Server:
    name: str
    url: str  # the chat completions endpoint
    headers: dict[str, str]
    pid: int

    def request(self, body: bytes) -> Request:
        return Request.post(self.url, headers=self.headers, body=body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its descendants so far (the workers of ``uvicorn --workers N``)."""
    return workers.tree_cpu_seconds(pid)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


class Children:
    """The child processes of this run, each logging to its own file; ``stop`` ends them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[IO[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self.procs[name]

    def tail(self, name: str, lines: int = 20) -> str:
        return "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])

    def errors_logged(self, name: str) -> list[str]:
        """Lines of the child's log at ERROR or above, or from a traceback (the first 5)."""
        text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        return [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")][:5]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()

    def wait_until_up(self, name: str, url: str, timeout: float = 30.0) -> None:
        """Return once ``url`` answers anything over HTTP. Raises BenchError if the process dies or is too slow."""
        proc, deadline = self.procs[name], time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with status {proc.returncode}:\n{self.tail(name)}")
            try:
                urllib.request.urlopen(url, timeout=1.0).close()
                return
            except urllib.error.HTTPError:
                return  # an HTTP answer, even 401 or 404, means the server is up
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"{name} did not answer {url} within {timeout:.0f} s:\n{self.tail(name)}") from None
                time.sleep(0.1)


def tollgate_env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_DEBUG"}
    env.update(
        DJANGO_SETTINGS_MODULE="gateway_site.settings", DATABASE_URL=database_url, REDIS_URL=redis_url,
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50), TOLLGATE_KEY_PEPPER=secrets.token_urlsafe(32),
        TOLLGATE_METRICS="off",  # as before metrics existed, so earlier figures stay comparable (see --metrics)
        **batch.run_queues(),
    )
    return env


class Bench:
    """The measurements of one run against the two servers, collected into ``results``."""

    def __init__(self, opts: argparse.Namespace, mock: Server, tollgate: Server, gated: Server,
                 reference: Server | None = None, metered: Metered | None = None,
                 fleet: workers.Fleet | None = None, rig: batch.Rig | None = None) -> None:
        self.opts, self.mock, self.tollgate, self.gated, self.reference = opts, mock, tollgate, gated, reference
        self.metered, self.fleet, self.rig = metered, fleet, rig
        self.tollgate_answers = 0  # every answered request through Tollgate, warm-ups included: one ledger row each
        self.also_tollgate: list[Server] = []  # the plain key's other endpoints (bench/dialects.py)
        self.metered_answers = 0  # of those, the ones the process with metrics on answered
        self.results: dict[str, Any] = {"phases": [], "streams": [], "rss_mb": {}}

    def count(self, result: Phase, server: Server) -> None:
        if (server is self.tollgate or server is self.gated or server in self.also_tollgate
                or (self.fleet is not None and server in self.fleet.servers)):
            self.tollgate_answers += result.answered
        if self.metered is not None and server is self.metered.server:
            self.tollgate_answers += result.answered
            self.metered_answers += result.answered

    async def phase(self, server: Server, concurrency: int, body: bytes = CHAT_BODY) -> dict[str, object]:
        async with Pool(server.request(body), concurrency) as pool:
            self.count(await hammer(pool, seconds=WARMUP_SECONDS, target=server.name), server)
            if server is self.tollgate and "after_warmup" not in self.results["rss_mb"]:
                self.results["rss_mb"]["after_warmup"] = round(rss_mb(server.pid), 1)
            cpu, loadgen = cpu_seconds(server.pid), time.process_time()
            result = await hammer(pool, seconds=self.opts.seconds, target=server.name)
            cpu, loadgen = cpu_seconds(server.pid) - cpu, time.process_time() - loadgen
        self.count(result, server)
        summary = result.summary()
        summary["cpu_ms_per_request"] = round(cpu * 1000 / result.ok, 3) if result.ok else None
        summary["loadgen_cpu_ms_per_request"] = round(loadgen * 1000 / result.ok, 3) if result.ok else None
        if server is self.mock:  # the mock sends no overhead header
            del summary["overhead_p50_ms"], summary["missing_overhead"]
        progress(f"c={concurrency:<3} {server.name:<8} {summary['rps']:>8} req/s  {result.errors} errors")
        return summary

    async def streams(self, server: Server) -> dict[str, object]:
        async with Pool(server.request(STREAM_BODY), STREAM_CONCURRENCY) as pool:
            self.count(await stream_rounds(pool, rounds=1, target=server.name), server)
            result = await stream_rounds(pool, rounds=self.opts.stream_rounds, target=server.name)
        self.count(result, server)
        progress(f"streams  {server.name:<8} {result.ok} streams  {result.errors} errors")
        return result.summary()

    async def large_prompt(self) -> dict[str, object]:
        """Plain requests at concurrency 16 alone; then while the gated key sends 8 MB prompts one at a time with a
        pause between them (the plain requests in flight during one are reported apart); then back to back."""
        async with Pool(self.tollgate.request(CHAT_BODY), LARGE_PROMPT_CONCURRENCY) as pool:
            self.count(await hammer(pool, seconds=WARMUP_SECONDS, target=self.tollgate.name), self.tollgate)
            alone = await hammer(pool, seconds=self.opts.seconds, target=self.tollgate.name)
            paced, paced_large = await self.beside_large(pool, pause=LARGE_PROMPT_PAUSE_SECONDS)
            flood, flood_large = await self.beside_large(pool, pause=0.0)
        during = overlapping(paced, paced_large)
        for phase, server in ((alone, self.tollgate), (paced, self.tollgate), (flood, self.tollgate),
                              (paced_large, self.gated), (flood_large, self.gated)):
            self.count(phase, server)
        errors = sum(p.errors for p in (alone, paced, flood, paced_large, flood_large))
        progress(f"large    {self.tollgate.name:<8} p99 {alone.summary()['p99_ms']} ms alone, "
                 f"{during.summary()['p99_ms']} ms during one, {flood.summary()['p99_ms']} ms back to back; "
                 f"{paced_large.ok + flood_large.ok} large prompts, {errors} errors")
        return {"prompt_bytes": LARGE_PROMPT_BYTES, "pause_seconds": LARGE_PROMPT_PAUSE_SECONDS,
                "alone": alone.summary(), "during": during.summary(), "paced": paced.summary(),
                "paced_large": paced_large.summary(), "loaded": flood.summary(), "large": flood_large.summary()}

    async def beside_large(self, pool: Pool, *, pause: float) -> tuple[Phase, Phase]:
        """Plain requests for a phase while one more client sends 8 MB prompts; returns both sides."""
        stop = asyncio.Event()
        async with Pool(self.gated.request(LARGE_BODY), 1) as large_pool:
            sender = asyncio.ensure_future(repeat_until(large_pool, stop, target="gated 8 MB", pause=pause))
            plain = await hammer(pool, seconds=self.opts.seconds, target=self.tollgate.name)
            stop.set()
            return plain, await sender

    async def metrics_cost(self, metered: Metered) -> dict[str, object]:
        """Plain requests at c=16 through the process with metrics off and the one with them on, alternating; then
        a scrape of the second, which must count every request it answered."""
        phases: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for _ in range(METRICS_ROUNDS):
            for label, server in (("off", self.tollgate), ("on", metered.server)):
                phases[label].append(await self.phase(server, METRICS_CONCURRENCY))
        results: dict[str, object] = {"concurrency": METRICS_CONCURRENCY, "rounds": METRICS_ROUNDS, **averaged(phases)}
        await asyncio.sleep(1.5)  # a process writes its /v1 values once a second (proxy/metrics.py Tally)
        results["counted"] = await asyncio.to_thread(scraped_requests, metered)
        results["answered"] = self.metered_answers
        progress(f"metrics  {results['counted']} requests counted by the scrape for {self.metered_answers} answered")
        return results

    async def soak(self) -> dict[str, object]:
        pid, peak = self.tollgate.pid, [rss_mb(self.tollgate.pid)]

        async def sample() -> None:
            while True:
                await asyncio.sleep(1.0)
                peak.append(rss_mb(pid))

        start = peak[0]
        sampler = asyncio.ensure_future(sample())
        async with Pool(self.tollgate.request(CHAT_BODY), SOAK_CONCURRENCY) as pool:
            result = await hammer(pool, seconds=self.opts.soak, target=self.tollgate.name)
        sampler.cancel()
        self.count(result, self.tollgate)
        end = rss_mb(pid)
        return {**result.summary(), "rss_start_mb": round(start, 1), "rss_end_mb": round(end, 1),
                "rss_peak_mb": round(max(peak + [end]), 1), "rss_change_percent": round((end - start) / start * 100, 1)}

    async def run(self) -> dict[str, Any]:
        for concurrency in self.opts.concurrency:
            for server in (self.mock, self.tollgate, self.gated):
                self.results["phases"].append(await self.phase(server, concurrency))
        for server in (self.mock, self.tollgate):
            self.results["streams"].append(await self.streams(server))
        if self.reference is not None:
            self.results["reference_streams"] = await self.streams(self.reference)
        if self.opts.large_prompt:
            self.results["large_prompt"] = await self.large_prompt()
        if self.metered is not None:
            self.results["metrics"] = await self.metrics_cost(self.metered)
        self.results["cached"] = await cached.measure(self)
        if not self.opts.no_dialects:
            self.results["dialects"] = await dialects.measure(self)
        if self.fleet is not None:
            self.results["workers"] = await workers.measure(self, self.fleet)
        if self.rig is not None:
            self.results["batch"] = await batch.measure(self, self.rig)
        if self.opts.soak:
            progress(f"soak: {self.opts.soak:.0f} s at concurrency {SOAK_CONCURRENCY} through Tollgate")
            self.results["soak"] = await self.soak()
        self.results["rss_mb"]["end"] = round(rss_mb(self.tollgate.pid), 1)
        return self.results


@dataclass(frozen=True)
class Metered:
    """The second Tollgate process, with TOLLGATE_METRICS on, and how to scrape it."""

    server: Server
    metrics_url: str
    token: str


def scraped_requests(metered: Metered) -> int:
    """The sum of tollgate_requests_total in one scrape of the process with metrics on."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(metered.metrics_url, headers={"Authorization": f"Bearer {metered.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return round(sum(sample.value for family in text_string_to_metric_families(text)
                     for sample in family.samples if sample.name == "tollgate_requests_total"))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated concurrencies (default 1,16,64)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured phase (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 s phases and one stream round")
    parser.add_argument("--stream-rounds", type=int, default=3, help="waves of 16 concurrent streams (default 3)")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="also soak at concurrency 16 and watch RSS")
    parser.add_argument("--reference", action="store_true",
                        help="also stream through a bare Django forwarder (bench/bare_django.py) for comparison")
    parser.add_argument("--large-prompt", action="store_true",
                        help="also measure plain latency at concurrency 16 while 8 MB prompts go to the gated key")
    parser.add_argument("--metrics", action="store_true",
                        help="also compare CPU per request at concurrency 16 with TOLLGATE_METRICS on and off")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="also run the same load through N uvicorn workers beside one, and check a rate limit across them")
    parser.add_argument("--batch", type=int, default=0, metavar="N",
                        help="also run a batch of N chat lines on one Celery worker beside interactive load")
    parser.add_argument("--no-dialects", action="store_true",
                        help="skip the Responses and Messages phase (for comparing with versions that lack them)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
    opts = parser.parse_args(argv)
    opts.concurrency = [int(c) for c in opts.concurrency.split(",") if c.strip()]
    if not opts.concurrency or min(opts.concurrency) < 1:
        parser.error("--concurrency needs whole numbers of at least 1, e.g. 1,16,64")
    if opts.workers < 1 or opts.batch < 0:
        parser.error("--workers needs a whole number of at least 1, --batch one of at least 0")
    if opts.quick:
        opts.seconds, opts.stream_rounds = 3.0, 1
    return opts


def start_servers(children: Children, opts: argparse.Namespace) -> tuple[Server, Server, Server, Seeded, dict[str, str]]:
    """Prepare the database, start both servers and seed. Returns the mock, Tollgate without and with the gate, what
    was seeded and Tollgate's environment."""
    mock_port, tollgate_port = free_port(), free_port()
    children.start("mock", [PYTHON, "bench/mock_upstream.py", "--port", str(mock_port)], dict(os.environ))
    env = tollgate_env(opts.database_url, opts.redis_url)
    ensure_database(opts.database_url)
    progress("migrating and seeding")
    run_django(["manage.py", "migrate", "--noinput"], env, "manage.py migrate")
    seeded = seed(env, f"http://127.0.0.1:{mock_port}/v1")
    children.start("tollgate", [PYTHON, "-m", "uvicorn", "gateway_site.asgi:application", "--port", str(tollgate_port),
                                "--lifespan", "off", "--no-access-log", "--log-level", "warning"], env)
    children.wait_until_up("mock", f"http://127.0.0.1:{mock_port}/_events")
    children.wait_until_up("tollgate", f"http://127.0.0.1:{tollgate_port}/v1/models")
    json_type = {"content-type": "application/json"}
    mock = Server("mock", f"http://127.0.0.1:{mock_port}/v1/chat/completions", json_type, children.procs["mock"].pid)
    tollgate = Server("tollgate", f"http://127.0.0.1:{tollgate_port}/v1/chat/completions",
                      {**json_type, "authorization": f"Bearer {seeded.key}"}, children.procs["tollgate"].pid)
    gated = Server("gated", tollgate.url, {**json_type, "authorization": f"Bearer {seeded.gated_key}"}, tollgate.pid)
    return mock, tollgate, gated, seeded, env


def start_metered(children: Children, env: dict[str, str], tollgate: Server) -> Metered:
    """Start a second Tollgate process with metrics on, with the first one's ``env`` (its secrets: the keys were
    issued under its pepper), serving the same plain key as ``tollgate``."""
    port, token = free_port(), secrets.token_urlsafe(32)
    env = {**env, "TOLLGATE_METRICS": "on", "TOLLGATE_OPS_TOKEN": token,
           "TOLLGATE_METRICS_DIR": str(children.log_dir / "metrics")}
    children.start("tollgate-metrics", [PYTHON, "-m", "uvicorn", "gateway_site.asgi:application", "--port", str(port),
                                        "--lifespan", "off", "--no-access-log", "--log-level", "warning"], env)
    children.wait_until_up("tollgate-metrics", f"http://127.0.0.1:{port}/v1/models")
    server = Server("metrics-on", f"http://127.0.0.1:{port}/v1/chat/completions", tollgate.headers,
                    children.procs["tollgate-metrics"].pid)
    return Metered(server, f"http://127.0.0.1:{port}/metrics", token)


def start_reference(children: Children, mock: Server) -> Server:
    """Start the bare Django forwarder in front of the mock (see bench/bare_django.py)."""
    port = free_port()
    env = {**os.environ, "BARE_UPSTREAM": mock.url, "PYTHONPATH": str(ROOT)}
    children.start("bare-django", [PYTHON, "-m", "uvicorn", "bench.bare_django:application", "--port", str(port),
                                   "--lifespan", "off", "--no-access-log", "--log-level", "warning"], env)
    children.wait_until_up("bare-django", f"http://127.0.0.1:{port}/")
    return Server("bare-django", f"http://127.0.0.1:{port}/v1/chat/completions", mock.headers, children.procs["bare-django"].pid)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # SIGTERM becomes SystemExit so the finally below stops the children, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as log_dir:
        children = Children(Path(log_dir))
        try:
            mock, tollgate, gated, seeded, env = start_servers(children, opts)
            reference = start_reference(children, mock) if opts.reference else None
            metered = start_metered(children, env, tollgate) if opts.metrics else None
            fleet = workers.start(children, env, tollgate, gated, opts.workers) if opts.workers > 1 else None
            rig = batch.start(children, env, tollgate, opts.batch) if opts.batch else None
            bench = Bench(opts, mock, tollgate, gated, reference, metered, fleet, rig)
            results = asyncio.run(bench.run())
            for name in ("mock", "tollgate", "tollgate-metrics", workers.NAME, batch.NAME):
                if name in children.procs and children.procs[name].poll() is not None:
                    raise BenchError(f"{name} died during the run:\n{children.tail(name)}")
            tenants = [seeded.tenant_id, seeded.gated_tenant_id, *([fleet.rate_tenant_id] if fleet else [])]
            requests = bench.tollgate_answers + (fleet.answers if fleet else 0)
            rows = count_ledger(opts.database_url, tenants, requests)
            results["ledger"] = {"rows": rows, "requests": requests}
            results["money"] = check_money(opts, seeded)
            results["tollgate_log_errors"] = [*children.errors_logged("tollgate"),
                                              *(children.errors_logged("tollgate-metrics") if opts.metrics else []),
                                              *(children.errors_logged(workers.NAME) if fleet else []),
                                              *(children.errors_logged(batch.NAME) if rig else [])]
        except BenchError as e:
            print(f"bench: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; child processes stopped", file=sys.stderr)
            return 130
        finally:
            children.stop()
    results["config"] = {"concurrency": opts.concurrency, "seconds": opts.seconds, "stream_rounds": opts.stream_rounds,
                         "soak": opts.soak, "large_prompt": opts.large_prompt, "metrics": opts.metrics,
                         "workers": opts.workers, "batch": opts.batch,
                         "cpus": os.cpu_count(),
                         "python": sys.version.split()[0]}
    print(table(results, opts))
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2) + "\n")
    # Correctness, not speed: any failed request or missing ledger row fails the run.
    large = results.get("large_prompt") or {}
    metered = results.get("metrics") or {}
    failed = any(p["errors"] for p in [*results["phases"], *results["streams"], results.get("soak") or {"errors": 0},
                                       *(metered.get(name, {"errors": 0}) for name in ("off", "on")),
                                       *(results["cached"][name] for name in ("plain", "hits")),
                                       *(figures for kind in ("whole", "streamed")
                                         for figures in (results.get("dialects") or {}).get(kind, {}).values()),
                                       *(large.get(name, {"errors": 0}) for name in ("alone", "paced", "paced_large", "loaded", "large"))])
    money = results["money"]
    money_wrong = money["open_holds"] or money["reserved_micros"] or any(
        counted != money["ledger_micros"] for counted in money["counter_micros"])
    metrics_wrong = bool(metered) and metered["counted"] != metered["answered"]
    failed = failed or ("workers" in results and workers.failed(results["workers"]))
    failed = failed or ("batch" in results and batch.failed(results["batch"]))
    return 2 if failed or money_wrong or metrics_wrong or results["ledger"]["rows"] != results["ledger"]["requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
