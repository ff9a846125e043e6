"""The upkeep job sends lost tasks again: validations that never ended, parts nobody took; never a flood of copies."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from batches import resending, runner, tasks, validation
from batches.models import Batch, BatchLine, BatchPart
from billing.models import Price
from proxy import routing

from ..conftest import Party
from ..factories import make_route
from .conftest import store_jsonl
from .running import line, rows_of, running_batch


@pytest.fixture
def mock(alice: Party, files_dir: Any, mock_upstream_url: str, settings: Any) -> Party:
    settings.TOLLGATE_ROUTES_CACHE_SECONDS = 0
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    Price.objects.create(model="mock", input_per_million=Decimal("100"), output_per_million=Decimal("300"))
    routing.invalidate()
    return alice


@pytest.fixture
def depths(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What the broker says of its queues' lengths: set ``depths["default"]``; ``depths["unreadable"] = True``."""
    said: dict[str, Any] = {}
    monkeypatch.setattr(resending, "queue_depths", lambda: None if said.get("unreadable") else
                        {k: v for k, v in said.items() if k != "unreadable"})
    return said


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Tasks published, recorded instead of run."""
    published: list[tuple[str, int]] = []
    monkeypatch.setattr(tasks.run_batch_part, "apply_async",
                        lambda args, queue: published.append(("part", args[0])))
    monkeypatch.setattr(tasks.validate_batch, "apply_async",
                        lambda args, queue: published.append(("validate", args[0])))
    return published


def validating_batch(party: Party, ago: float, count: int = 2) -> Batch:
    row = store_jsonl(party, [line(f"r{i}") for i in range(count)])
    created = timezone.now() - timedelta(seconds=ago)
    return Batch.objects.create(tenant=party.tenant, key=party.key, endpoint=Batch.Endpoint.CHAT, input_file=row,
                                input_file_public_id=row.public_id, queue="default", created_at=created,
                                expires_at=created + timedelta(hours=24))


def test_a_validation_lost_for_longer_than_the_bound_is_sent_again_and_the_batch_runs(
        mock: Party, depths: dict[str, Any], settings: Any) -> None:
    settings.TOLLGATE_BATCH_VALIDATION_RESEND_SECONDS = 300
    depths["default"] = 0
    recent, lost = validating_batch(mock, ago=200), validating_batch(mock, ago=400)
    runner.tend()  # eager: the validation runs here, then its parts
    lost.refresh_from_db()
    assert (lost.status, lost.completed, lost.validation_resends) == (Batch.Status.COMPLETED, 2, 1)
    assert Batch.objects.get(pk=recent.pk).status == Batch.Status.VALIDATING  # its validation may still come


def test_a_validation_is_sent_again_with_a_growing_wait_and_not_while_its_queue_holds_messages(
        mock: Party, depths: dict[str, Any], sent: list[tuple[str, int]], settings: Any) -> None:
    settings.TOLLGATE_BATCH_VALIDATION_RESEND_SECONDS = 300
    batch = validating_batch(mock, ago=0)
    start = batch.created_at
    depths["default"] = 7  # a backlog: the validation may be among them
    runner.tend(start + timedelta(seconds=400))
    assert sent == []
    depths["default"] = 0  # a long scan may still run: waits of 300 s, then 600, 1200, 2400, 3600, 3600...
    for second in range(400, 3 * 3600 + 1, 30):
        runner.tend(start + timedelta(seconds=second))
    # Sent again at 400, 1030, 2260, 4690 and 8320 s.
    assert sent == [("validate", batch.pk)] * 5 and Batch.objects.get(pk=batch.pk).validation_resends == 5


def test_two_validations_of_one_batch_at_once_split_it_once(mock: Party, monkeypatch: pytest.MonkeyPatch,
                                                            settings: Any) -> None:
    settings.TOLLGATE_BATCH_PART_LINES = 2
    batch = validating_batch(mock, ago=400, count=5)
    real = validation.scan_file
    raced: list[bool] = []

    def scan_raced(*args: Any, **kwargs: Any) -> Any:
        if not raced:  # while this one reads the file, a copy of its task validates and runs the whole batch
            raced.append(True)
            validation.validate_batch(batch.pk)
        return real(*args, **kwargs)

    monkeypatch.setattr(validation, "scan_file", scan_raced)
    validation.validate_batch(batch.pk)
    batch.refresh_from_db()
    assert raced and (batch.status, batch.parts, batch.completed, batch.failed) == (Batch.Status.COMPLETED, 3, 5, 0)
    assert sorted(BatchPart.objects.filter(batch=batch).values_list("number", flat=True)) == [0, 1, 2]
    assert BatchLine.objects.filter(batch=batch).count() == 5 and len(rows_of(batch)) == 5


def test_a_stale_validation_does_not_start_a_batch_another_started(mock: Party) -> None:
    batch = validating_batch(mock, ago=0, count=3)
    first, second = Batch.objects.get(pk=batch.pk), Batch.objects.get(pk=batch.pk)  # both read it validating
    scan = validation.Scan(total=3, model="mock", route="mock")
    assert validation.start(first, scan, timezone.now()) is True
    assert validation.start(second, scan, timezone.now()) is False
    assert BatchPart.objects.filter(batch=batch).count() == 1


def test_a_backlog_does_not_multiply_part_messages(mock: Party, depths: dict[str, Any],
                                                   sent: list[tuple[str, int]]) -> None:
    batch = running_batch(mock, [line(f"r{i}") for i in range(6)], part_lines=2)
    runner.send_parts(batch)
    assert len(sent) == 3
    start = timezone.now()
    depths["default"] = 5000  # other batches' parts ahead of them, for two hours
    for second in range(0, 2 * 3600, 30):
        runner.tend(start + timedelta(seconds=second))
    assert len(sent) == 3


def test_where_the_queue_length_is_unreadable_a_part_is_sent_again_with_a_doubling_wait(
        mock: Party, depths: dict[str, Any], sent: list[tuple[str, int]], settings: Any) -> None:
    settings.TOLLGATE_BATCH_LEASE_SECONDS = 30
    batch = running_batch(mock, [line("a")])
    runner.send_parts(batch)
    depths["unreadable"] = True
    start = BatchPart.objects.get(batch=batch).sent_at
    for second in range(0, 3 * 3600 + 1, 10):
        runner.tend(start + timedelta(seconds=second))
    # Waits of 30, 60, 120, 240, 480, 960, 1920 s, then an hour: sent again at 40, 110, 240, 490, 980, 1950, 3880
    # and 7490 s (the tend job's 10 s ticks), 8 copies in three hours where one per lease would have been 360.
    assert sent == [("part", batch.part_rows.get().pk)] * (1 + 8)
    assert BatchPart.objects.get(batch=batch).resends == 8


def test_a_lost_part_message_is_sent_again_once_its_queue_is_empty(mock: Party, depths: dict[str, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    batch = running_batch(mock, [line("a"), line("b")])
    monkeypatch.setattr(tasks.run_batch_part, "apply_async", lambda args, queue: None)  # the broker loses it
    runner.send_parts(batch)
    monkeypatch.undo()
    monkeypatch.setattr(resending, "queue_depths", lambda: {"default": 0})
    sent_at = BatchPart.objects.get(batch=batch).sent_at
    runner.tend(sent_at + timedelta(seconds=5))  # sent less than a lease ago: it may be on its way
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.IN_PROGRESS
    runner.tend(sent_at + timedelta(seconds=31))  # eager: sent again, it runs here
    batch.refresh_from_db()
    assert (batch.status, batch.completed) == (Batch.Status.COMPLETED, 2)


def test_a_part_never_sent_is_sent_whatever_the_queue_holds(mock: Party, depths: dict[str, Any],
                                                             sent: list[tuple[str, int]]) -> None:
    batch = running_batch(mock, [line("a")])  # its validation's process died before sending it
    depths["default"] = 100
    runner.tend()
    assert sent == [("part", batch.part_rows.get().pk)]
    runner.tend()
    assert len(sent) == 1


def test_a_part_whose_worker_died_is_sent_at_once_and_its_wait_starts_over(
        mock: Party, depths: dict[str, Any], sent: list[tuple[str, int]]) -> None:
    batch = running_batch(mock, [line("a")])
    part = batch.part_rows.get()
    BatchPart.objects.filter(pk=part.pk).update(state="running", worker="dead:1", resends=5,
                                                lease_expires_at=timezone.now() - timedelta(seconds=1))
    depths["default"] = 100
    runner.tend()
    assert sent == [("part", part.pk)] and BatchPart.objects.get(pk=part.pk).resends == 0
