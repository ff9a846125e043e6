"""The write-ahead journal's file: what is read back, when files go away, and who may replay them."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from billing import journal, recovery


def test_a_request_is_read_back_as_far_as_it_got_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    book = journal.Journal(tmp_path)
    book.begin("a", {"tenant_id": 1, "prompt_tokens": 7}, settles=True)
    book.checkpoint("a", "Once upon")
    book.checkpoint("a", " a time", {"prompt_tokens": 7, "completion_tokens": 3, "cached_tokens": 0})
    book.begin("b", {"tenant_id": 1, "prompt_texts": ["odd \ud800 text"]}, settles=False)  # a lone surrogate
    book.ended([("b", {"cost_picos": 5})])
    book.written(["b"])
    with open(book.path, "ab") as f:
        f.write(b'{"t":"e","id":"a","row":{"cost')  # the process died mid-write
    requests = journal.read(book.path)
    a, b = requests["a"], requests["b"]
    assert (a.begin or {})["prompt_tokens"] == 7 and "".join(a.texts) == "Once upon a time"
    assert a.usage == {"prompt_tokens": 7, "completion_tokens": 3, "cached_tokens": 0}
    assert (a.row, a.written, a.settled) == (None, False, False)
    assert (b.begin or {})["prompt_texts"] == ["odd \ud800 text"] and b.row == {"cost_picos": 5} and b.written


def test_a_file_whose_requests_are_all_done_is_deleted_when_the_next_one_starts(tmp_path: Path) -> None:
    book = journal.Journal(tmp_path, segment_bytes=200)
    book.begin("held", {"tenant_id": 1}, settles=True)
    first = book.path
    book.begin("plain", {"tenant_id": 1, "prompt_texts": ["x" * 300]}, settles=False)  # passes 200 bytes: new file
    assert book.path != first and first.exists()  # "held" is still open in the first file
    book.written(["held", "plain"])
    book.settled("held")
    assert not first.exists()
    book.close()
    assert list(tmp_path.iterdir()) == []  # everything done: nothing left for a recovery


def test_only_files_of_dead_processes_are_handed_to_the_recovery(tmp_path: Path) -> None:
    alive = journal.Journal(tmp_path)
    alive.begin("r", {"tenant_id": 1}, settles=False)
    dead = tmp_path / "gone-1-000001.journal"
    dead.write_bytes(b'{"t":"b","id":"x","tenant_id":1}\n')  # nobody holds its lock
    found = list(journal.orphans(tmp_path, own=set()))
    try:
        assert [path for path, _ in found] == [dead]  # the live process's file is locked, so skipped
    finally:
        for _, fd in found:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    alive.close()


def test_a_request_that_moved_to_another_deployment_is_recovered_as_that_one(tmp_path: Path) -> None:
    book = journal.Journal(tmp_path)
    book.begin("a", {"tenant_id": 1, "public_model": "gpt-4o", "provider": "openai", "upstream_model": "gpt-4o-1",
                     "prompt_tokens": 7}, settles=True)
    book.checkpoint("a", "", serving={"public_model": "claude", "provider": "anthropic", "upstream_model": "claude-3"})
    book.checkpoint("a", "Once upon")
    entry = recovery.lost_entry(journal.read(book.path)["a"])
    # A fallback was being asked when the process died: the row names it, and is priced by it.
    assert (entry.public_model, entry.provider, entry.upstream_model) == ("claude", "anthropic", "claude-3")
    assert (entry.prompt_tokens, entry.completion_text) == (7, "Once upon")
