from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import workers

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def test_cpu_of_a_server_counts_every_worker_process() -> None:
    # uvicorn --workers N: the supervisor does almost nothing, its children serve. Both children burn 0.3 s here.
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys\n"
                               f"children = [subprocess.Popen([sys.executable, '-c', {BURN!r} + 'time.sleep(30)'])"
                               " for _ in range(2)]\n"
                               "[child.wait() for child in children]"])
    try:
        deadline = time.monotonic() + 20
        # /proc counts in clock ticks: 0.3 s of burning may read as 0.29 s. The parent is read before the tree, so
        # whatever the parent adds in between only makes the tree larger.
        while True:
            own = workers.process_cpu_seconds(parent.pid)
            if len(workers.workers_of(parent.pid)) >= 2 and workers.tree_cpu_seconds(parent.pid) >= own + 0.55:
                break
            assert time.monotonic() < deadline, "the children never burned their CPU"
            time.sleep(0.05)
        tree = list(workers.process_tree(parent.pid))
        assert len(tree) == 3 and tree[0] == parent.pid
    finally:
        for pid in workers.children_of(parent.pid):
            subprocess.run(["kill", str(pid)], check=False)
        parent.wait(timeout=10)
    assert workers.process_cpu_seconds(parent.pid) == 0.0  # gone: counted as nothing, not an error


def begin(tenant_id: int) -> str:
    return json.dumps({"t": "b", "id": "r", "tenant_id": tenant_id}, separators=(",", ":")) + "\n"


def test_admissions_are_counted_per_worker_from_each_process_journal(tmp_path: Path) -> None:
    # Files are host-pid-id-segment.journal; the host name may hold dashes. Only the tenant's begin lines count.
    (tmp_path / "web-1-4f2a-101-0a1b2c3d-000000.journal").write_text(begin(7) * 3 + begin(8) + '{"t":"e","id":"r"}\n')
    (tmp_path / "web-1-4f2a-101-0a1b2c3d-000001.journal").write_text(begin(7))
    (tmp_path / "web-1-4f2a-102-9e8d7c6b-000000.journal").write_text(begin(7) * 2)
    (tmp_path / "web-1-4f2a-103-11111111-000000.journal").write_text(begin(8))
    assert workers.admitted_by_worker(tmp_path, 7) == [4, 2]


def results(admitted: int, rows: int, ledger_admitted: int, errors: int = 0) -> dict[str, Any]:
    phase = {"target": "tollgate", "concurrency": 16, "rps": 100.0, "cpu_ms_per_request": 1.0, "p50_ms": 1.0,
             "p99_ms": 2.0, "errors": errors}
    many = {**phase, "target": "2w plain", "worker_cpu_share": [50, 50]}
    gated, many_gated = {**phase, "target": "gated"}, {**many, "target": "2w gated"}
    rate = {"limit": 60, "sent": 180, "admitted": admitted, "refused": 180 - admitted, "other": 0,
            "admitted_by_worker": [admitted // 2, admitted - admitted // 2],
            "exact": admitted == 60, "ledger": {"rows": rows, "admitted": ledger_admitted}}
    return {"workers": 2, "phases": [phase, many, gated, many_gated], "rate_limit": rate}


def test_the_run_fails_unless_the_rate_limit_and_the_ledger_are_exact_across_workers() -> None:
    assert not workers.failed(results(60, 180, 60))
    assert workers.failed(results(61, 180, 61))  # one worker admitted past the limit
    assert workers.failed(results(60, 179, 60))  # a request without its ledger row
    assert workers.failed(results(60, 180, 59))  # the ledger disagrees with what clients saw
    assert workers.failed(results(60, 180, 60, errors=1))
    table = "\n".join(workers.lines(results(60, 180, 60)))
    assert "1 worker" in table and "2 workers" in table and "1.00x" in table and table.rstrip().endswith("OK")
    assert "MISMATCH" in "\n".join(workers.lines(results(61, 180, 61)))
