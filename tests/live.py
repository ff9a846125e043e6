"""Servers for end-to-end tests: the mock upstream in a thread, Tollgate itself in a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from bench import mock_upstream

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


@contextmanager
def mock_upstream_server() -> Iterator[str]:
    """Run the mock provider in a thread; yields its root URL."""
    with serve_app(mock_upstream.app) as url:
        yield url


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run an ASGI app (a test's own upstream) under uvicorn in a thread; yields its root URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


@contextmanager
def tollgate_server(database_name: str, log_path: Path, **env: str) -> Iterator[str]:
    """Run Tollgate under uvicorn in its own process, on the test database; yields its root URL."""
    with tollgate_process(database_name, log_path, **env) as (url, _):
        yield url


@contextmanager
def tollgate_process(database_name: str, log_path: Path, *, workers: int = 1,
                     **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """As tollgate_server, yielding the process too (fault tests kill it); with ``workers`` > 1, uvicorn's parent."""
    port = free_port()
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test",
        "TOLLGATE_LIVE_TEST_DATABASE": database_name,
        "TOLLGATE_ROUTES_CACHE_SECONDS": "0",  # tests add routes from outside the server process
        "TOLLGATE_UPKEEP": "on",
        **env,
    }
    command = [sys.executable, "-m", "uvicorn", "gateway_site.asgi:application", "--host", "127.0.0.1",
               "--port", str(port), "--lifespan", "on", "--no-access-log",
               "--forwarded-allow-ips", environment.get("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1")]
    if workers > 1:
        command += ["--workers", str(workers)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=BASE_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, process=process)
            yield f"http://127.0.0.1:{port}", process
        finally:
            stop(process, 10)


@contextmanager
def celery_worker(database_name: str, log_path: Path, *, queues: str = "",
                  **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run a Celery worker with embedded beat in its own process, on the test database; ``queues`` as for -Q."""
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "gateway_site.settings_test",
        "TOLLGATE_LIVE_TEST_DATABASE": database_name,
        **env,
    }
    args = ["worker", "--beat", "--loglevel", "INFO", "--concurrency", "1", "--without-gossip", "--without-mingle"]
    with celery_process(args + (["--queues", queues] if queues else []), environment, log_path) as process:
        yield process


@contextmanager
def celery_process(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A gateway_site <args>`` with exactly ``env``, its output in ``log_path``; stopped on exit."""
    command = [sys.executable, "-m", "celery", "-A", "gateway_site", *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            stop(process, 15)


def stop(process: subprocess.Popen[bytes], grace: float) -> None:
    """Ask the process to end, and insist after ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
