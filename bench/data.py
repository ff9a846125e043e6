"""The benchmark's database: create it, seed a run's tenants and routes, and check its ledger and money afterwards."""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


class BenchError(Exception):
    """The benchmark could not be set up or run; the message says why."""


# Run by the child Python with Tollgate's environment. The key reaches us through a file only we can read.
SEED_SCRIPT = """
import json, os, sys
from datetime import date
from decimal import Decimal
import django
django.setup()
from accounts.models import ApiKey, Tenant
from accounts.services import create_tenant, issue_key
from billing.models import Budget, Price
from proxy.models import Deployment, ModelRoute, Provider

base_url, slug, out = sys.argv[1], sys.argv[2], sys.argv[3]
from accounts import pepper
# Every run makes its own pepper: rotate to it, as an operator would (the earlier runs' keys are revoked).
if pepper.recorded() not in (None, pepper.fingerprint()):
    pepper.rotate()
tenant = create_tenant(name="Benchmark " + slug, slug=slug)
_, secret = issue_key(tenant=tenant, name="bench")
provider, _ = Provider.objects.update_or_create(
    name="bench-mock", defaults={"kind": "openai_compatible", "preset": "custom", "base_url": base_url, "is_active": True})
for model in ("mock", "mock-slow"):
    route, _ = ModelRoute.objects.update_or_create(name=model, defaults={"is_active": True})
    route.deployments.all().delete()
    Deployment.objects.create(route=route, provider=provider, upstream_model=model)
    Price.objects.get_or_create(model=model, provider=None, effective_from=date(2020, 1, 1),
                                defaults={"input_per_million": Decimal("1.00"), "output_per_million": Decimal("2.00")})
# The same mock behind the response cache: the cached phase sends one request again and again (hits are free).
cached, _ = ModelRoute.objects.update_or_create(name="mock-cached", defaults={"is_active": True, "cache_enabled": True})
cached.deployments.all().delete()
Deployment.objects.create(route=cached, provider=provider, upstream_model="mock")
# The gated tenant: every limit and budget the gate knows, set far above what the run can use.
gated = create_tenant(name="Benchmark gated " + slug, slug=slug + "-gated")
Tenant.objects.filter(pk=gated.pk).update(requests_per_minute=10**9, tokens_per_minute=2 * 10**9, max_concurrent=10**4)
gated_key, gated_secret = issue_key(tenant=gated, name="bench gated")
ApiKey.objects.filter(pk=gated_key.pk).update(requests_per_minute=10**9, tokens_per_minute=2 * 10**9, max_concurrent=10**4)
budgets = [Budget.objects.create(tenant=gated, amount=Decimal("1000000"), period="month", name="tenant month"),
           Budget.objects.create(tenant=gated, key=gated_key, amount=Decimal("1000000"), period="day", name="key day")]
with open(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handoff:
    json.dump({"key": secret, "tenant_id": tenant.pk, "gated_key": gated_secret, "gated_tenant_id": gated.pk,
               "budget_ids": [b.pk for b in budgets]}, handoff)
"""


def ensure_database(url: str) -> None:
    """Create the database named in the URL unless it exists. Raises BenchError for a non-PostgreSQL URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise BenchError(f"the benchmark needs PostgreSQL; got a {parts.scheme}:// URL")
    name = unquote(parts.path.lstrip("/"))
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def run_django(args: list[str], env: dict[str, str], what: str) -> str:
    """Run a Django child to completion and return its stdout. Raises BenchError with its stderr on failure."""
    done = subprocess.run([PYTHON, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"{what} failed (status {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


@dataclass(frozen=True)
class Seeded:
    key: str  # plaintext of the plain tenant's key: no budgets, no rate limits
    tenant_id: int
    gated_key: str  # the gated tenant's key: two budgets and rate limits on the key and the tenant
    gated_tenant_id: int
    budget_ids: list[int]


def seed(env: dict[str, str], mock_base_url: str) -> Seeded:
    """Seed this run's tenants, keys, budgets, prices and routes."""
    slug = f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory() as private:
        handoff = Path(private) / "seeded.json"
        run_django(["-c", SEED_SCRIPT, mock_base_url, slug, str(handoff)], env, "seeding")
        seeded = json.loads(handoff.read_text())
    return Seeded(**seeded)


def count_ledger(database_url: str, tenant_ids: list[int], expected: int) -> int:
    """Rows of the tenants, once they stop changing: stream rows are written just after the last byte."""
    last, settled_at = -1, time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM billing_usagerecord WHERE tenant_id = ANY(%s)", (tenant_ids,)).fetchone()
            count = int(row[0]) if row else 0
            if count != last:
                last, settled_at = count, time.monotonic()
            if count >= expected or time.monotonic() - settled_at > 3.0:
                return count
            time.sleep(0.2)


PICOS_PER_MICRO = 10**6


def check_money(opts: argparse.Namespace, seeded: Seeded) -> dict[str, Any]:
    """The gated tenant's spend three ways: the ledger, each budget's running total in Redis, and open holds.

    Compared exactly, in pico-dollars; the micro-dollar figures are for display.
    """
    import redis

    with psycopg.connect(opts.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(sum(cost_picos), 0) FROM billing_usagerecord WHERE tenant_id = %s",
                           (seeded.gated_tenant_id,)).fetchone()
    ledger = int(row[0]) if row else 0
    client = redis.Redis.from_url(opts.redis_url)
    counted, reserved = [], 0
    for budget_id in seeded.budget_ids:
        # A counter's spend is s micro-dollars plus p pico-dollars (see billing/holds.py).
        pattern = f"tg:{{t{seeded.gated_tenant_id}}}:budget:{budget_id}:*"  # see billing/keyspace.py
        periods = [client.hmget(key, "s", "p", "r") for key in client.scan_iter(pattern)]
        counted.append(sum(int(s or 0) * PICOS_PER_MICRO + int(p or 0) for s, p, _ in periods))
        reserved += sum(int(r or 0) for _, _, r in periods)
    return {"ledger_micros": ledger // PICOS_PER_MICRO,
            "counter_micros": [shown_micros(picos, ledger) for picos in counted],
            "reserved_micros": reserved, "open_holds": int(client.zcard(f"tg:{{t{seeded.gated_tenant_id}}}:holds")),
            "ledger_picos": ledger, "counter_picos": counted, "agrees": all(picos == ledger for picos in counted)}


def shown_micros(counter: int, ledger: int) -> int:
    """The counter in whole micro-dollars, kept apart from the ledger's figure whenever the two differ at all:
    a difference below one micro-dollar still reads as a mismatch to whoever compares the micro-dollar figures."""
    micros = counter // PICOS_PER_MICRO
    if counter != ledger and micros == ledger // PICOS_PER_MICRO:
        return micros + (1 if counter > ledger else -1)
    return micros
