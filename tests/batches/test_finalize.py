"""Finishing a batch: output and error files in input order, the final counts and status, one finalizer at a time."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from batches import finalize, leases, lines, runner
from batches.models import Batch, BatchPart, File

from ..conftest import Party
from .running import line, read_file, running_batch


def settle(batch: Batch, index: int, custom_id: str, status: int) -> None:
    line_id = leases.claim(batch.pk, batch.tenant_id, index, custom_id)
    assert line_id is not None
    outcome = lines.Outcome(status, {"n": index} if status == 200 else {"error": {"code": "x"}}, f"req{index}")
    leases.save_result(line_id, batch.pk, succeeded=status == 200, status_code=status, request_id=outcome.request_id,
                       result=lines.output_line(custom_id, outcome))


def done_parts(batch: Batch) -> None:
    BatchPart.objects.filter(batch=batch).update(state=BatchPart.State.DONE)


def test_files_list_lines_in_input_order_with_unrun_lines_of_a_cancelled_batch(alice: Party, files_dir: Any) -> None:
    batch = running_batch(alice, [line(f"c{i}") for i in range(6)], part_lines=3)
    # Lines finished out of order; c1 and c4 never ran.
    settle(batch, 5, "c5", 200)
    settle(batch, 3, "c3", 500)
    settle(batch, 0, "c0", 200)
    settle(batch, 2, "c2", 429)
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.CANCELLING, cancelling_at=timezone.now())
    assert finalize.maybe_finalize(batch.pk)
    batch.refresh_from_db()
    assert (batch.status, batch.completed, batch.failed, batch.total) == (Batch.Status.CANCELLED, 2, 4, 6)
    assert batch.cancelled_at is not None and batch.finalizing_at is not None
    assert [o["custom_id"] for o in read_file(batch.output_file)] == ["c0", "c5"]
    errors = read_file(batch.error_file)
    assert [e["custom_id"] for e in errors] == ["c1", "c2", "c3", "c4"]
    assert [e["response"]["status_code"] if e["response"] else e["error"]["code"] for e in errors] == [
        "batch_cancelled", 429, 500, "batch_cancelled"]
    for row, kind in ((batch.output_file, "output"), (batch.error_file, "error")):
        assert row is not None and row.purpose == File.Purpose.BATCH_OUTPUT and row.tenant_id == alice.tenant.pk
        assert row.filename == f"{batch.public_id}_{kind}.jsonl" and row.key_id is None


def test_no_error_file_when_every_line_succeeded_and_no_output_file_when_none_did(alice: Party, files_dir: Any) -> None:
    good = running_batch(alice, [line("a"), line("b")])
    settle(good, 0, "a", 200)
    settle(good, 1, "b", 200)
    done_parts(good)
    bad = running_batch(alice, [line("a")])
    settle(bad, 0, "a", 400)
    done_parts(bad)
    assert finalize.maybe_finalize(good.pk) and finalize.maybe_finalize(bad.pk)
    good.refresh_from_db()
    bad.refresh_from_db()
    assert (good.status, good.output_file is not None, good.error_file) == (Batch.Status.COMPLETED, True, None)
    assert (bad.status, bad.output_file, bad.error_file is not None) == (Batch.Status.COMPLETED, None, True)
    assert good.completed_at is not None and (bad.completed, bad.failed) == (0, 1)


def test_a_batch_with_a_part_still_running_is_not_finalized(alice: Party, files_dir: Any) -> None:
    batch = running_batch(alice, [line("a"), line("b")], part_lines=1)
    settle(batch, 0, "a", 200)
    BatchPart.objects.filter(batch=batch, number=0).update(state=BatchPart.State.DONE)
    assert not finalize.maybe_finalize(batch.pk)
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.CANCELLING, cancelling_at=timezone.now())
    BatchPart.objects.filter(batch=batch, number=1).update(state=BatchPart.State.RUNNING, worker="w:1",
                                                           lease_expires_at=timezone.now() + timedelta(seconds=30))
    assert not finalize.maybe_finalize(batch.pk)  # its in-flight lines are still to be recorded
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.CANCELLING


def test_finalizing_twice_writes_once_and_a_late_finalizer_changes_nothing(alice: Party, files_dir: Any) -> None:
    batch = running_batch(alice, [line("a")])
    settle(batch, 0, "a", 200)
    done_parts(batch)
    assert finalize.maybe_finalize(batch.pk)
    assert not finalize.maybe_finalize(batch.pk)
    batch.refresh_from_db()
    kept = batch.output_file_id
    # A finalizer that claimed earlier and was replaced (its claim's time is no longer the batch's) writes nothing.
    files_before = File.objects.count()
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.FINALIZING)
    finalize.finish(Batch.objects.get(pk=batch.pk), timezone.now() - timedelta(hours=1))
    assert File.objects.count() == files_before
    assert Batch.objects.get(pk=batch.pk).output_file_id == kept


def test_tend_takes_over_a_finalization_whose_finalizer_died(alice: Party, files_dir: Any, settings: Any) -> None:
    batch = running_batch(alice, [line("a")])
    settle(batch, 0, "a", 200)
    done_parts(batch)
    stuck = timezone.now() - timedelta(seconds=settings.TOLLGATE_BATCH_LEASE_SECONDS + 1)
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.FINALIZING, finalizing_at=stuck)
    runner.tend()
    batch.refresh_from_db()
    assert batch.status == Batch.Status.COMPLETED and len(read_file(batch.output_file)) == 1


@pytest.mark.needs_postgres
@pytest.mark.django_db(transaction=True)
def test_two_processes_finalizing_at_once_write_one_set_of_files(alice: Party, files_dir: Any) -> None:
    batch = running_batch(alice, [line(f"c{i}") for i in range(50)])
    for i in range(50):
        settle(batch, i, f"c{i}", 200 if i % 2 == 0 else 500)
    done_parts(batch)
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def finalizer() -> None:
        barrier.wait()
        try:
            results.append(finalize.maybe_finalize(batch.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=finalizer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    batch.refresh_from_db()
    assert File.objects.filter(purpose=File.Purpose.BATCH_OUTPUT).count() == 2
    assert (batch.status, batch.completed, batch.failed) == (Batch.Status.COMPLETED, 25, 25)
    assert len(read_file(batch.output_file)) == 25 and len(read_file(batch.error_file)) == 25
