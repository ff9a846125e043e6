"""The benchmark's batch phase (bench/batch.py): a smoke run with a tiny batch, and its verdicts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connection

from bench import batch, report, run

LINES = 50


def database_url() -> str:
    """The test run's PostgreSQL database (already migrated by pytest-django) as a URL for the bench's clients."""
    s = connection.settings_dict
    password = f":{quote(s['PASSWORD'], safe='')}" if s.get("PASSWORD") else ""
    return f"postgres://{quote(s['USER'] or 'postgres', safe='')}{password}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.mark.needs_postgres
@pytest.mark.needs_redis
@pytest.mark.django_db(transaction=True)  # the bench's processes must see committed rows, and commit their own
def test_a_small_batch_runs_beside_interactive_load_with_a_row_per_line(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "STALL_SECONDS", 20.0)  # a stuck batch fails the test soon, with the worker's log
    monkeypatch.setattr(batch, "WARMUP_LINES", 5)
    monkeypatch.setattr(run, "run_django", lambda *_: "")  # its one use is `migrate`: pytest-django migrated already
    monkeypatch.setenv("TOLLGATE_DATA_DIR", str(tmp_path / "data"))  # the servers' files and journals: this test's own
    monkeypatch.delenv("TOLLGATE_JOURNAL_DIR", raising=False)
    opts = run.parse_args(["--concurrency", "16", "--seconds", "0.3", "--batch", str(LINES),
                           "--database-url", database_url(), "--redis-url", os.environ["REDIS_URL"]])
    children = run.Children(tmp_path)
    try:
        mock, tollgate, gated, _, env = run.start_servers(children, opts)
        rig = batch.start(children, env, tollgate, opts.batch)
        bench = run.Bench(opts, mock, tollgate, gated, rig=rig)
        results = asyncio.run(batch.measure(bench, rig))
        worker_errors = children.errors_logged(batch.NAME)
    finally:
        children.stop()
    assert results["status"] == "completed", results
    assert results["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
    assert results["rows"] == results["custom_ids"] == results["output_lines"] == LINES
    assert results["warmup_rows"] == 5 and results["tenant_rows"] == LINES + 5
    assert results["money"]["agrees"] and results["money"]["ledger_picos"] > 0 and not results["money"]["open_holds"]
    assert results["lines_per_second"]["end_to_end"] and results["worker_cpu_ms_per_line"]
    assert results["interactive"]["without"]["p50_ms"] and results["interactive"]["with"]["requests"] > 0
    assert not batch.failed(results), results
    assert worker_errors == []
    table = "\n".join(report.batch_lines(results))
    assert f"batch: {LINES} chat lines on one Celery worker process" in table and "MISMATCH" not in table
    assert "lines/s" in table and "worker CPU ms/line" in table and "p50 latency ms" in table


def results(**changes: Any) -> dict[str, Any]:
    phase = {"rps": 400.0, "p50_ms": 30.0, "p99_ms": 60.0, "web_cpu_ms_per_request": 1.5, "requests": 4000,
             "errors": 0, "first_error": ""}
    money = {"ledger_micros": 100, "counter_micros": [100, 100], "reserved_micros": 0, "open_holds": 0, "agrees": True}
    out = {"lines": 10, "queue": "default", "in_flight": 32, "per_minute": None, "status": "completed", "error_file": False,
           "request_counts": {"total": 10, "completed": 10, "failed": 0}, "line_seconds": 0.5, "end_to_end_seconds": 1.0,
           "rows": 10, "custom_ids": 10, "rows_200": 10, "tenant_rows": 12, "warmup_lines": 2, "warmup_rows": 2, "cost_picos_per_line": [10**7],
           "discount_percent": 50, "output_lines": 10, "output_complete": True, "money": money,
           "interactive": {"without": phase, "with": {**phase, "p50_ms": 33.0}}, "p50_rise_percent": 10.0,
           "lines_per_second": {"run": 20.0, "end_to_end": 10.0}, "worker_cpu_ms_per_line": 5.0}
    for name, value in changes.items():
        out[name] = value
    return out


def test_the_run_fails_unless_every_line_has_its_row_and_the_money_adds_up() -> None:
    assert not batch.failed(results())
    assert batch.failed(results(rows=9))  # a line without its ledger row
    assert batch.failed(results(rows=11, custom_ids=10))  # a line charged twice
    assert batch.failed(results(tenant_rows=13))  # a row of the tenant outside its batches
    assert batch.failed(results(warmup_rows=1, tenant_rows=11))  # a line of the warm-up batch without its row
    assert batch.failed(results(request_counts={"total": 10, "completed": 9, "failed": 1}))
    assert batch.failed(results(status="expired"))
    assert batch.failed(results(output_complete=False))
    assert batch.failed(results(money={**results()["money"], "agrees": False}))
    assert batch.failed(results(money={**results()["money"], "open_holds": 1}))
    errors = {"without": {**results()["interactive"]["without"], "errors": 1, "first_error": "HTTP 500"},
              "with": results()["interactive"]["with"]}
    assert batch.failed(results(interactive=errors))
    # Timings are reported, never asserted: a p50 rise above the target does not fail the run.
    assert not batch.failed(results(p50_rise_percent=40.0))


def test_the_table_reports_rate_cpu_latency_rows_and_money() -> None:
    table = "\n".join(report.batch_lines(results()))
    assert "20.0 from first line claimed to last finished" in table and "10.0 created to completed" in table
    assert "worker CPU ms/line" in table and "5.000" in table
    assert "+10.0 %  OK (target <= 15 %)" in table
    assert table.count("  OK") == 3 and "MISMATCH" not in table
    high = "\n".join(report.batch_lines(results(p50_rise_percent=40.0, interactive={
        "without": results()["interactive"]["without"], "with": {**results()["interactive"]["with"], "p50_ms": 42.0}})))
    assert "+40.0 %  ABOVE TARGET" in high
    assert "MISMATCH" in "\n".join(report.batch_lines(results(rows=9)))
