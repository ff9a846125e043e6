"""What one rollup run costs on a large ledger: 5 M rows over one UTC day, then a run after 1,000 and 10,000 new rows.

    .venv/bin/python -m bench.rollups --database-url postgres://postgres@127.0.0.1:5432/tollgate_bench

The database is created if missing, migrated, and filled once with ``INSERT ... SELECT generate_series`` (about a
minute); later runs reuse the rows and only delete what an earlier run added after them. PostgreSQL only: the figures
that matter are PostgreSQL's. Each timed step is one ``billing.rollups.roll_up()`` call, the job beat runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DAY = datetime(2026, 1, 15, tzinfo=UTC)  # the day the rows fall in, fixed so runs compare
DAY_SPAN = timedelta(days=1) - timedelta(microseconds=1)
NEW = "bench-new"  # the error code that marks rows added after the day's fill, deleted at the next start
TENANTS, KEYS_PER_TENANT = 4, 5
MODELS = [("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-sonnet", "anthropic"), ("llama-3", "groq"),
          ("mistral-large", "mistral")]


def create_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.pop("REDIS_URL", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "gateway_site.settings_test"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def keys() -> list[int]:
    """The bench's keys (TENANTS x KEYS_PER_TENANT), created once."""
    from accounts.models import ApiKey, Tenant

    ids = []
    for t in range(TENANTS):
        tenant, _ = Tenant.objects.get_or_create(slug=f"bench-rollups-{t}", defaults={"name": f"Bench rollups {t}"})
        for k in range(KEYS_PER_TENANT):
            key, _ = ApiKey.objects.get_or_create(prefix=f"benchroll{t}k{k}",
                                                  defaults={"tenant": tenant, "name": f"key {k}", "digest": "-"})
            ids.append(key.pk)
    return ids


INSERT = """
INSERT INTO billing_usagerecord (request_id, tenant_id, key_id, endpoint, public_model, provider, upstream_model, stream,
    prompt_tokens, completion_tokens, cached_tokens, usage_source, end_reason, error_code, status_code, latency_ms,
    ttfb_ms, cost_picos, price_id, unpriced, gate, created_at)
SELECT gen_random_uuid(), k.tenant_id, k.id, 'chat', m.model, m.provider, m.model, i %% 2 = 0,
    100 + i %% 900, 10 + i %% 400, 0, 'provider',
    CASE WHEN i %% 97 = 0 THEN 'upstream_error' WHEN i %% 89 = 0 THEN 'rejected' ELSE 'complete' END, %(mark)s,
    CASE WHEN i %% 97 = 0 THEN 502 WHEN i %% 89 = 0 THEN 429 ELSE 200 END,
    (50 + 3000 * random() ^ 3)::int, CASE WHEN i %% 2 = 0 THEN (20 + 400 * random() ^ 2)::int END,
    (100 + i %% 900)::bigint * 2500000 + (10 + i %% 400)::bigint * 10000000, NULL, false, '{}'::jsonb,
    %(start)s::timestamptz + (i - 1) * %(span)s::interval / %(count)s
FROM generate_series(1, %(count)s) AS i
JOIN (SELECT id, tenant_id, row_number() OVER (ORDER BY id) - 1 AS n FROM accounts_apikey WHERE id = ANY(%(keys)s)) k
  ON k.n = i %% %(nkeys)s
JOIN (SELECT * FROM unnest(%(models)s::text[], %(providers)s::text[]) WITH ORDINALITY AS t(model, provider, n)) m
  ON m.n - 1 = (i / %(nkeys)s) %% %(nmodels)s
"""


def insert(key_ids: list[int], *, count: int, start: datetime, span: timedelta, mark: str = "") -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        cursor.execute(INSERT, {"start": start, "span": span, "count": count, "mark": mark, "keys": key_ids,
                                "nkeys": len(key_ids),
                                "models": [m for m, _ in MODELS], "providers": [p for _, p in MODELS],
                                "nmodels": len(MODELS)})


def fill(key_ids: list[int], rows: int) -> int:
    """The day's rows, inserted once; returns the id of the last of them."""
    from django.db import connection
    from django.db.models import Max

    from billing.models import UsageRecord

    UsageRecord.objects.filter(error_code=NEW).delete()  # rows an earlier run added
    if UsageRecord.objects.count() != rows:
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE billing_usagerecord, billing_usagerollup, billing_rollupstate")
        started = time.perf_counter()
        insert(key_ids, count=rows, start=DAY, span=DAY_SPAN)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE billing_usagerecord")
        print(f"filled {rows:,} ledger rows in {time.perf_counter() - started:.1f} s")
    return int(UsageRecord.objects.aggregate(last=Max("id"))["last"])


def initial_rollups(last_id: int) -> float:
    """Every hour and the day rolled up, and the watermark at the last row: the state beat would have reached."""
    from billing import rollups
    from billing.models import RollupState, UsageRollup

    started = time.perf_counter()
    UsageRollup.objects.all().delete()
    RollupState.objects.update_or_create(name=rollups.STATE, defaults={"last_record_id": last_id - 1})
    for hour in range(24):
        rollups.rebuild(UsageRollup.Granularity.HOUR, DAY + timedelta(hours=hour), DAY + timedelta(hours=hour + 1))
    rollups.roll_up()  # the last row: its hour again, and the day
    return time.perf_counter() - started


def timed_run(key_ids: list[int], new_rows: int) -> tuple[float, Any]:
    """Add new rows in the day's last hour, then time one roll_up()."""
    from billing import rollups

    insert(key_ids, count=new_rows, start=DAY + timedelta(hours=23, minutes=10), span=timedelta(minutes=30), mark=NEW)
    started = time.perf_counter()
    run = rollups.roll_up(chunk=max(new_rows, rollups.CHUNK))
    return time.perf_counter() - started, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""), help="a PostgreSQL URL")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per size (the median is shown)")
    args = parser.parse_args()
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        parser.error("--database-url must be a PostgreSQL URL")
    create_database(args.database_url)
    setup_django(args.database_url)
    key_ids = keys()
    last = fill(key_ids, args.rows)
    print(f"initial rollups (24 hours and the day): {initial_rollups(last):.2f} s")
    for new_rows in (1_000, 10_000):
        times = []
        for _ in range(args.repeat):
            took, run = timed_run(key_ids, new_rows)
            times.append(took)
        print(f"run after {new_rows:,} new rows: median {sorted(times)[len(times) // 2]:.3f} s "
              f"(runs {', '.join(f'{t:.3f}' for t in times)}; last read {run.rows_read} rows, wrote {run.rollups} rollups)")


if __name__ == "__main__":
    main()
