"""./tollgate run, the real script: it checks the port before touching anything, says so in one line when it cannot
listen, announces "Tollgate is running" only once its own server answers, and leaves a running instance alone."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from gateway_site.settings import BASE_DIR

from ..live import free_port

SCRIPT = str(BASE_DIR / "tollgate")
RUNNING = "Tollgate is running"


def plain_shell(data_dir: Path, **env: str) -> dict[str, str]:
    """A new terminal's environment, with its own data folder: none of this test run's settings, database or Redis."""
    skip = ("DJANGO_", "TOLLGATE_", "DATABASE_URL", "REDIS_URL", "EMAIL_", "PYTEST")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(skip)}, "TOLLGATE_DATA_DIR": str(data_dir), **env}


def tollgate(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


@contextmanager
def occupied(port: int) -> Iterator[socket.socket]:
    """Another program listening on the port."""
    sock = socket.socket()
    # As servers do: a port left in TIME_WAIT by a stopped server is free, one with a listener is not.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock
    finally:
        sock.close()


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_busy_port_stops_the_run_in_one_line_before_anything_is_touched(tmp_path: Path) -> None:
    port = free_port()
    with occupied(port):
        done = tollgate(plain_shell(tmp_path / "data", TOLLGATE_PORT=str(port)), "run", timeout=60)
    assert done.returncode == 1 and RUNNING not in done.stdout
    assert one_line(done.stderr) == (f"Tollgate cannot listen on 127.0.0.1:{port}: the port is already in use "
                                     "(another Tollgate?); stop it or set TOLLGATE_PORT.")
    assert not (tmp_path / "data").exists()  # no database, no secrets, no demo key rotated, no worker started


@pytest.mark.parametrize(
    "host, port, reason",
    [
        ("192.0.2.1", "8000", "192.0.2.1 is not an address of this machine; set TOLLGATE_HOST"),  # TEST-NET-1
        ("127.0.0.1", "eighty", "TOLLGATE_PORT must be a number from 1 to 65535"),
        ("127.0.0.1", "70000", "TOLLGATE_PORT must be a number from 1 to 65535"),
    ],
)
def test_an_address_it_cannot_listen_on_is_named_in_one_line(tmp_path: Path, host: str, port: str, reason: str) -> None:
    done = tollgate(plain_shell(tmp_path / "data", TOLLGATE_HOST=host, TOLLGATE_PORT=port), "run", timeout=60)
    assert done.returncode == 1 and RUNNING not in done.stdout
    assert one_line(done.stderr) == f"Tollgate cannot listen on {host}:{port}: {reason}."
    assert not (tmp_path / "data").exists()


def test_manage_runs_commands_with_the_secrets_run_uses(tmp_path: Path) -> None:
    done = tollgate(plain_shell(tmp_path), "manage", "check")
    assert done.returncode == 0 and "no issues" in done.stdout, done.stderr
    for name in ("secret_key", "key_pepper"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600 and len((tmp_path / name).read_text()) > 40
    key_pepper = (tmp_path / "key_pepper").read_text()
    assert tollgate(plain_shell(tmp_path), "manage", "check").returncode == 0
    assert (tmp_path / "key_pepper").read_text() == key_pepper  # made once, kept


class Run:
    """`./tollgate run` in the background, its output in files."""

    def __init__(self, env: dict[str, str], folder: Path, name: str) -> None:
        self.out, self.err = folder / f"{name}.out", folder / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen([SCRIPT, "run"], cwd=BASE_DIR, env=env, stdout=out, stderr=err,
                                            start_new_session=True)

    def output(self) -> str:
        return self.out.read_text()

    def wait_for(self, condition: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
            assert self.process.poll() is None, f"./tollgate run ended early:\n{self.output()}\n{self.err.read_text()}"
            time.sleep(0.2)
        assert condition(), f"timed out:\n{self.output()}\n{self.err.read_text()}"  # type: ignore[operator]

    def stop(self, grace: float = 30) -> int:
        """Ctrl-C's signal to the script alone (it stops its children), then the whole group if it must."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


def demo_key(output: str) -> str:
    match = re.search(r"Demo key: (tg-\S+)", output)
    assert match, output
    return match.group(1)


def models_status(port: int, key: str) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def test_run_announces_only_its_own_server_and_a_second_run_leaves_the_first_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    env = plain_shell(data, TOLLGATE_PORT=str(port))
    runs: list[Run] = []
    try:
        # Another program takes the port after the check passed: the server cannot bind, and the script says so.
        lost = Run(env, tmp_path, "lost")
        runs.append(lost)
        lost.wait_for(lambda: (data / "run.lock").exists(), 60)
        with occupied(port):
            assert lost.process.wait(120) == 1
        assert RUNNING not in lost.output()
        assert lost.err.read_text().strip().splitlines()[-2:] == [
            f"Tollgate cannot listen on 127.0.0.1:{port}: the port is already in use (another Tollgate?); stop it or "
            "set TOLLGATE_PORT.", "Tollgate did not start: the server exited (see its messages above)."]

        first = Run(env, tmp_path, "first")
        runs.append(first)
        first.wait_for(lambda: RUNNING in first.output(), 120)
        key = demo_key(first.output())
        assert models_status(port, key) == 200
        assert f"Emails:   written to {data / 'outbox'}/" in first.output()
        # The README's commands from a plain shell issue keys that this server accepts.
        issued = subprocess.run([sys.executable, "manage.py", "issuekey", "demo", "--name", "laptop"],
                                cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60)
        assert issued.returncode == 0 and models_status(port, issued.stdout.strip()) == 200, issued.stderr

        same_port = tollgate(env, "run", timeout=60)
        assert same_port.returncode == 1 and RUNNING not in same_port.stdout
        assert "the port is already in use" in one_line(same_port.stderr)
        other_port = tollgate(plain_shell(data, TOLLGATE_PORT=str(free_port())), "run", timeout=60)
        assert other_port.returncode == 1 and RUNNING not in other_port.stdout
        assert one_line(other_port.stderr).startswith(f"Tollgate is already running from {data}")
        assert models_status(port, key) == 200  # the first instance's demo key was not rotated

        assert first.stop() in (0, 130, 143)
        with occupied(port):
            pass  # the server let go of the port

        # A different pepper from the one the keys were issued under: refused in one line, nothing announced.
        (data / "key_pepper").write_text(secrets.token_urlsafe(48))
        changed = tollgate(env, "run", timeout=120)
        assert changed.returncode != 0 and RUNNING not in changed.stdout
        assert "Rotating the key pepper" in one_line(changed.stderr)
    finally:
        for run in runs:
            run.stop()


def session_command_lines(session: int) -> list[list[str]]:
    """The command lines of the processes in a session: the script run with start_new_session, and its children."""
    lines = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat, cmdline = stat_path.read_text(), (stat_path.parent / "cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        sid = stat.rpartition(")")[2].split()[3]  # state, ppid, pgrp, session: after the name, which may hold spaces
        if int(sid) == session and cmdline:
            lines.append(cmdline.decode().split("\0")[:-1])
    return lines


def worker_queues(session: int) -> list[str]:
    """The --queues argument of every Celery worker process of the session (pool and beat children included)."""
    return [line[line.index("--queues") + 1] for line in session_command_lines(session)
            if "worker" in line and "--queues" in line and any(part.endswith("/celery") for part in line[:2])]


def celery_call(env: dict[str, str], task: str, *options: str) -> str:
    """Send a task as the README does from a plain shell; returns its id."""
    sent = subprocess.run([str(BASE_DIR / ".venv" / "bin" / "celery"), "-A", "gateway_site", "call", task, *options],
                          cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    return sent.stdout.strip()


def test_run_starts_one_worker_on_the_housekeeping_queue_and_every_tier_queue_highest_first(tmp_path: Path) -> None:
    # The low tier renamed: the names come from the settings, not from the script.
    env = plain_shell(tmp_path / "data", TOLLGATE_PORT=str(free_port()), TOLLGATE_QUEUE_LOW="bulk")
    run = Run(env, tmp_path, "queues")
    try:
        run.wait_for(lambda: RUNNING in run.output(), 120)
        run.wait_for(lambda: worker_queues(run.process.pid), 30)
        # One worker (its pool and embedded beat share its command line), in priority order: on Redis a worker takes
        # from the first non-empty queue in this order (settings: queue_order_strategy).
        assert set(worker_queues(run.process.pid)) == {"celery,high,default,bulk"}
        # On the embedded filesystem broker, a batch task sent to each tier's queue is picked up, and beat's jobs too.
        received = [celery_call(env, "batches.tend_batches", "--queue", queue) for queue in ("high", "default", "bulk")]
        housekeeping = celery_call(env, "billing.tasks.reap_expired_holds")  # no queue named: "celery"
        expected = [f"Task batches.tend_batches[{task_id}] received" for task_id in received]
        expected.append(f"Task billing.tasks.reap_expired_holds[{housekeeping}] succeeded")
        run.wait_for(lambda: all(line in run.err.read_text() for line in expected), 60)
        # The README's batch, end to end on this worker: the demo tenant's tier is default.
        client = OpenAI(base_url=f"http://127.0.0.1:{env['TOLLGATE_PORT']}/v1", api_key=demo_key(run.output()))
        requests = "".join(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
            "model": "demo", "messages": [{"role": "user", "content": f"Question {i}"}]}}) + "\n" for i in range(3))
        uploaded = client.files.create(file=("requests.jsonl", requests.encode()), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        deadline = time.monotonic() + 60
        while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed" and batch.request_counts.completed == 3, batch  # type: ignore[union-attr]
        output = client.files.content(batch.output_file_id).text  # type: ignore[arg-type]
        assert [json.loads(line)["custom_id"] for line in output.splitlines()] == ["q0", "q1", "q2"]
        assert "Task batches.validate_batch[" in run.err.read_text()  # validated by the worker, not by the server
        assert run.stop() in (0, 130, 143)
        assert worker_queues(run.process.pid) == []  # stopping still ends the worker
    finally:
        run.stop()
