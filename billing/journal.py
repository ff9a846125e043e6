"""The ledger's write-ahead journal: what a serving process admitted and how each request ended, on local disk.

Each serving process appends JSON lines to a file of its own in TOLLGATE_JOURNAL_DIR and holds an exclusive
``flock`` on it while it lives. The lines, in order of a request's life:

- ``b`` (begin): written when the gate admits the request, before the provider is called: who, which model, the
  prompt tokens counted at admission (or the prompt's texts), the budget hold and the in-flight slots it took.
- ``c`` (checkpoint): what a stream has relayed so far, at most about once a second.
- ``e`` (end): the finished ledger row, tokens and cost included, before it is inserted.
- ``w`` (written): the rows the database has committed. ``s`` (settled): the hold and slots were given back.

A request is done once it is written and settled. A file whose requests are all done is deleted when the process
moves to a new file (every SEGMENT_BYTES, 32 MB) or stops. A file nobody holds a lock on belongs to a
dead process: billing/recovery.py replays it, idempotently (rows are unique by request id, settlements are marked).

Appends are one ``write`` each, with no fsync: they survive the process being killed (the kernel has them), not the
machine losing power.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

SUFFIX = ".journal"
SEGMENT_BYTES = 32 * 1024 * 1024


def dumps(record: dict[str, Any]) -> bytes:
    # Two lines per request on the /v1 path: orjson takes a tenth of the standard library's time. What it refuses
    # (a lone surrogate, an integer past 64 bits) the standard library escapes, so one odd value never loses a line.
    try:
        return orjson.dumps(record, default=str) + b"\n"
    except TypeError:
        return json.dumps(record, separators=(",", ":"), default=str).encode() + b"\n"


class Journal:
    """This process's journal. Thread-safe: the event loop and the database thread both append."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lock = threading.Lock()
        self.number = 0
        self.fd = -1
        self.size = 0
        self.open: dict[str, list[Any]] = {}  # request id -> [segment number, written, settled]
        self.segments: dict[int, tuple[Path, int, int]] = {}  # number -> (path, fd, requests still open)
        self._rotate()

    @property
    def path(self) -> Path:
        return self.segments[self.number][0]

    def _rotate(self) -> None:
        self.number += 1
        path = self.directory / f"{self.name}-{self.number:06d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while this process lives
        self.fd, self.size = fd, 0
        self.segments[self.number] = (path, fd, 0)
        for number in [n for n, (_, _, count) in self.segments.items() if count == 0 and n != self.number]:
            self._retire(number)

    def _retire(self, number: int) -> None:
        path, fd, _ = self.segments.pop(number)
        path.unlink(missing_ok=True)
        os.close(fd)

    def _write(self, data: bytes) -> None:
        # Callers hold self.lock.
        os.write(self.fd, data)
        self.size += len(data)
        if self.size >= self.segment_bytes:
            self._rotate()

    def _track(self, request_id: str, *, written: bool, settled: bool) -> None:
        if request_id in self.open:
            return
        self.open[request_id] = [self.number, written, settled]
        path, fd, count = self.segments[self.number]
        self.segments[self.number] = (path, fd, count + 1)

    def _mark(self, request_id: str, index: int) -> None:
        state = self.open.get(request_id)
        if state is None:
            return
        state[index] = True
        if state[1] and state[2]:
            del self.open[request_id]
            path, fd, count = self.segments[state[0]]
            self.segments[state[0]] = (path, fd, count - 1)
            if count == 1 and state[0] != self.number:
                self._retire(state[0])

    def begin(self, request_id: str, fields: dict[str, Any], *, settles: bool) -> None:
        """Record an admitted request before its provider is called. ``settles``: it holds money or slots."""
        data = dumps({"t": "b", "id": request_id, **fields})
        with self.lock:
            self._track(request_id, written=False, settled=not settles)
            self._write(data)

    def checkpoint(self, request_id: str, text: str, usage: dict[str, int] | None = None, *,
                   serving: dict[str, str] | None = None) -> None:
        """Note what a request relayed since its last checkpoint; ``serving``: the public model, provider and upstream
        model it is now asking, when a retry or fallback moved it from those of its begin line."""
        record: dict[str, Any] = {"t": "c", "id": request_id, "text": text}
        if usage is not None:
            record["usage"] = usage
        if serving is not None:
            record["serving"] = serving
        data = dumps(record)
        with self.lock:
            self._write(data)

    def ended(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Record finished rows (request id, column values) before they are inserted."""
        data = b"".join(dumps({"t": "e", "id": request_id, "row": row}) for request_id, row in rows)
        with self.lock:
            self._write(data)

    def written(self, request_ids: list[str]) -> None:
        data = dumps({"t": "w", "ids": request_ids})
        with self.lock:
            for request_id in request_ids:
                self._track(request_id, written=True, settled=True)  # a row with no begin has nothing to settle
                self._mark(request_id, 1)
            self._write(data)

    def unwritten(self, request_ids: list[str]) -> None:
        """Rows that could not be inserted yet: keep them open until a retry writes them."""
        with self.lock:
            for request_id in request_ids:
                self._track(request_id, written=False, settled=True)

    def settled(self, request_id: str) -> None:
        data = dumps({"t": "s", "id": request_id})
        with self.lock:
            self._write(data)
            self._mark(request_id, 2)

    def close(self) -> None:
        """Stop appending; files whose requests are all done are deleted, the others are left to recovery."""
        with self.lock:
            for number, (path, fd, count) in list(self.segments.items()):
                if count == 0:
                    path.unlink(missing_ok=True)
                os.close(fd)
            self.segments.clear()

    def own_paths(self) -> set[Path]:
        with self.lock:
            return {path for path, _, _ in self.segments.values()}


@dataclass
class Lost:
    """One request of a dead process's journal, as far as it got."""

    request_id: str
    begin: dict[str, Any] | None = None
    texts: list[str] = field(default_factory=list)
    usage: dict[str, int] | None = None
    serving: dict[str, str] | None = None  # the deployment a retry or fallback moved to, over the begin line's
    row: dict[str, Any] | None = None
    written: bool = False
    settled: bool = False


def read(path: Path) -> dict[str, Lost]:
    """Every request a journal file mentions. A torn last line (the process died mid-write) is skipped."""
    requests: dict[str, Lost] = {}
    with path.open("rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            kind = record.get("t")
            for request_id in record.get("ids") or [record.get("id")]:
                state = requests.setdefault(request_id, Lost(request_id))
                if kind == "b":
                    state.begin = record
                elif kind == "c":
                    state.texts.append(record.get("text", ""))
                    state.usage = record.get("usage") or state.usage
                    state.serving = record.get("serving") or state.serving
                elif kind == "e":
                    state.row = record["row"]
                elif kind == "w":
                    state.written = True
                elif kind == "s":
                    state.settled = True
    return requests


def orphans(directory: Path, own: set[Path]) -> Iterator[tuple[Path, int]]:
    """Journal files of dead processes, each yielded locked (path, fd); the caller unlocks and closes the fd."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if path in own:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # its owner retired it meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # alive
            continue
        if not path.exists():  # retired between the glob and the lock
            os.close(fd)
            continue
        yield path, fd


_journal: Journal | None = None
_journal_lock = threading.Lock()


def journal() -> Journal:
    """This process's journal, opened on first use."""
    global _journal
    if _journal is None:
        from django.conf import settings

        with _journal_lock:
            if _journal is None:
                _journal = Journal(Path(settings.TOLLGATE_JOURNAL_DIR))
    return _journal


def close_journal() -> None:
    global _journal
    with _journal_lock:
        if _journal is not None:
            _journal.close()
            _journal = None
