"""Expired files: their content and rows are deleted by an hourly job, never while an unfinished batch uses them."""

from __future__ import annotations

import importlib
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from batches import expiry, finalize, storage, tasks
from batches.models import Batch, File

from ..conftest import Party
from .batch_rows import make_batch, make_file
from .conftest import chat_line, store_jsonl
from .running import line, running_batch
from .test_finalize import done_parts, settle


def expired(party: Party, ago: float = 3600, **fields: Any) -> File:
    row = store_jsonl(party, [chat_line("a")])
    File.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=ago), **fields)
    row.refresh_from_db()
    return row


def stored(row: File) -> bool:
    return storage.storage().exists(row.storage_name)


def test_expired_files_lose_their_content_and_rows_in_chunks(alice: Party, bob: Party, files_dir: Any) -> None:
    gone = [expired(alice) for _ in range(4)] + [expired(bob)]
    kept = [store_jsonl(alice, [chat_line("a")]), expired(alice, ago=-3600)]  # no expiry; expiring in an hour
    assert all(stored(row) for row in gone + kept)
    assert expiry.delete_expired_files(chunk=2) == 5
    assert not File.objects.filter(pk__in=[r.pk for r in gone]).exists() and not any(stored(r) for r in gone)
    assert File.objects.filter(pk__in=[r.pk for r in kept]).count() == 2 and all(stored(r) for r in kept)
    assert expiry.delete_expired_files() == 0


def test_one_run_deletes_at_most_its_bound_and_the_next_takes_the_rest(alice: Party, files_dir: Any) -> None:
    rows = [expired(alice) for _ in range(5)]
    assert expiry.delete_expired_files(chunk=2, most=3) == 4  # whole chunks: 2, then 2
    assert expiry.delete_expired_files(chunk=2, most=3) == 1
    assert not File.objects.filter(pk__in=[r.pk for r in rows]).exists()


@pytest.mark.parametrize("status", ["validating", "in_progress", "finalizing", "cancelling"])
def test_the_input_of_an_unfinished_batch_is_kept_until_the_batch_ends(alice: Party, files_dir: Any,
                                                                       status: str) -> None:
    row = expired(alice)
    batch = make_batch(alice, status=status, input_file=row)
    assert expiry.delete_expired_files() == 0 and stored(row)
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.COMPLETED)
    assert expiry.delete_expired_files() == 1 and not stored(row)
    batch.refresh_from_db()
    assert batch.input_file is None and batch.input_file_public_id == "file-input"


def test_a_file_just_expired_is_left_for_the_next_run(alice: Party, files_dir: Any) -> None:
    # A batch created from it in the same second may still be committing.
    row = expired(alice, ago=1)
    assert expiry.delete_expired_files() == 0 and stored(row)


def test_content_already_missing_still_deletes_the_row(alice: Party, files_dir: Any) -> None:
    row = expired(alice)
    storage.storage().delete(row.storage_name)
    assert expiry.delete_expired_files() == 1 and not File.objects.filter(pk=row.pk).exists()


def test_batch_output_files_do_not_expire_unless_configured(alice: Party, files_dir: Any, settings: Any) -> None:
    def finished() -> Batch:
        batch = running_batch(alice, [line("a"), line("b")])
        settle(batch, 0, "a", 200)
        settle(batch, 1, "b", 500)
        done_parts(batch)
        assert finalize.maybe_finalize(batch.pk)
        return Batch.objects.select_related("output_file", "error_file").get(pk=batch.pk)

    batch = finished()
    assert batch.output_file.expires_at is None and batch.error_file.expires_at is None
    settings.TOLLGATE_BATCH_OUTPUT_EXPIRY_DAYS = 30
    batch = finished()
    for row in (batch.output_file, batch.error_file):
        assert row.expires_at == batch.completed_at + timedelta(days=30)


def test_the_task_runs_the_service(alice: Party, files_dir: Any) -> None:
    row = expired(alice)
    make_file(alice, b"{}\n")
    tasks.delete_expired_files.delay()
    assert not File.objects.filter(pk=row.pk).exists() and File.objects.count() == 1


def test_the_job_is_scheduled_every_hour(db: None) -> None:
    from django.apps import apps
    from django_celery_beat.models import PeriodicTask

    migration = importlib.import_module("batches.migrations.0004_expired_files_schedule")
    migration.create_schedule(apps, None)  # a transactional test may have emptied the tables; it is idempotent
    migration.create_schedule(apps, None)
    (task,) = PeriodicTask.objects.filter(task="batches.delete_expired_files")
    assert (task.name, task.interval.every, task.interval.period, task.enabled) == (
        "Delete expired files", 1, "hours", True)
