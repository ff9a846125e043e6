"""Redis servers a test starts itself (on free ports, in a temporary folder): one plain server, or a cluster."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .live import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def available() -> str:
    """Why no server can be started here, or "" when one can."""
    if not Path(REDIS_SERVER).exists() or not Path(REDIS_CLI).exists():
        return "redis-server and redis-cli are not installed"
    return ""


def wait_ready(process: subprocess.Popen[bytes], port: int, timeout: float = 5.0) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.05)
        finally:
            client.close()


def start(folder: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(folder), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(process, port)
    except Exception:
        stop([process])
        raise
    return process, port


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def server(folder: Path, *args: str) -> Iterator[str]:
    """A plain Redis server; yields its URL."""
    process, port = start(folder, *args)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop([process])


@contextmanager
def cluster(folder: Path, nodes: int = 3) -> Iterator[str]:
    """A Redis Cluster of ``nodes`` primaries and no replicas; yields the URL of its first node."""
    started: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for i in range(nodes):
            # The bus port is named: the default (port + 10000) may be taken, or past 65535.
            process, port = start(folder / f"node{i}", "--cluster-enabled", "yes", "--cluster-config-file",
                                  "nodes.conf", "--cluster-node-timeout", "2000", "--cluster-port", str(free_port()))
            started.append(process)
            ports.append(port)
        subprocess.run([REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)
        wait_cluster_ok(ports)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        stop(started)


def wait_cluster_ok(ports: list[int], timeout: float = 10.0) -> None:
    import redis

    deadline = time.monotonic() + timeout
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the cluster did not reach cluster_state:ok")
                time.sleep(0.05)
        finally:
            client.close()
