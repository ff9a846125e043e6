"""Helpers for end-to-end batch tests: a live worker on the tier queues, input files, polling, reading results."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from openai import OpenAI
from openai.types import Batch

from ..live import celery_worker, tollgate_server

TERMINAL = {"completed", "failed", "cancelled", "expired"}


@contextmanager
def queued_gateway(database_name: str, folder: Path, **env: str) -> Iterator[tuple[str, Path]]:
    """A live Tollgate server and a Celery worker on "celery" and the three tier queues, on the test database;
    yields the server's URL and the worker's log. Both use ``folder`` as their data folder, where the embedded
    default keeps the filesystem broker and the uploaded files; with REDIS_URL set the broker is Redis."""
    queues = ",".join(["celery", *settings.TOLLGATE_QUEUES.values()])
    env = {"TOLLGATE_DATA_DIR": str(folder), "TOLLGATE_ROUTES_CACHE_SECONDS": "0", **env}
    log = folder / "worker.log"
    with celery_worker(database_name, log, queues=queues, TOLLGATE_UPKEEP="on", **env) as worker, \
            tollgate_server(database_name, folder / "server.log", **env) as url:
        deadline = time.monotonic() + 30
        while " ready." not in log.read_text(errors="replace"):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        yield url, log


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def parse_jsonl(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.splitlines() if line.strip()]


def chat_line(custom_id: str, model: str = "mock", **fields: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"Say hello to {custom_id}"}], "max_tokens": 5}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body, **fields}


def embedding_line(custom_id: str, model: str = "mock") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
            "body": {"model": model, "input": f"text of {custom_id}"}}


def upload(client: OpenAI, lines: list[dict[str, Any]] | bytes, name: str = "input.jsonl") -> str:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    return client.files.create(file=(name, data, "application/jsonl"), purpose="batch").id


def wait_for(client: OpenAI, batch_id: str, statuses: set[str], *, timeout: float, log: Path | None = None) -> Batch:
    """Poll the batch until its status is one of ``statuses``; fails with the worker's log tail after ``timeout``.

    On the way, its request counts never go down and never pass the total."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    done = (0, 0)
    while True:
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if (counts := batch.request_counts) is not None:
            assert counts.completed >= done[0] and counts.failed >= done[1], (done, counts)
            assert counts.completed + counts.failed <= counts.total, counts
            done = (counts.completed, counts.failed)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline or batch.status in TERMINAL:
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise AssertionError(f"batch {batch_id} went {seen}, not to {statuses}: {batch}\n{tail}")
        time.sleep(0.1)
