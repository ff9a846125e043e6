"""The stored responses beat job: background runs whose worker was lost are failed, expired responses deleted."""

from __future__ import annotations

from datetime import timedelta
import importlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.apps import apps
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from openai.types.responses import Response as SdkResponse

from accounts.models import Tenant
from batches import background, tasks
from gateway_site.celery import app
from proxy.models import StoredResponse

from ..conftest import Party
from ..dialects.stored import store

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def send_task() -> Iterator[mock.MagicMock]:
    """The publish of runs sent again, replaced: these tests check what is sent where."""
    with mock.patch.object(app, "send_task") as patched:
        yield patched


def aged(row: StoredResponse, seconds: int) -> StoredResponse:
    StoredResponse.objects.filter(pk=row.pk).update(updated_at=timezone.now() - timedelta(seconds=seconds))
    return row


def test_the_schedule_runs_every_minute() -> None:
    migration = importlib.import_module("proxy.migrations.0006_stored_responses_schedule")
    migration.create_schedule(apps, None)  # a transactional test may have emptied the tables; it is idempotent
    migration.create_schedule(apps, None)
    (task,) = PeriodicTask.objects.filter(name="Tend stored responses")
    assert task.task == "batches.tend_stored_responses" and task.enabled
    assert (task.interval.every, task.interval.period) == (60, "seconds")


def test_runs_in_progress_past_the_bound_are_failed_as_worker_lost(alice: Party, settings: Any,
                                                                 send_task: mock.MagicMock) -> None:
    settings.TOLLGATE_RESPONSES_LOST_SECONDS = 600
    lost = aged(store(alice, status="in_progress", background=True), 601)
    running = aged(store(alice, status="in_progress", background=True), 500)
    waiting = aged(store(alice, status="queued", background=True), 7200)  # a busy queue, or a lost message
    done = aged(store(alice, status="completed", background=True), 7200)
    tasks.tend_stored_responses.apply()
    statuses = dict(StoredResponse.objects.values_list("pk", "status"))
    assert statuses == {lost.pk: "failed", running.pk: "in_progress", waiting.pk: "queued", done.pk: "completed"}
    lost.refresh_from_db()
    assert lost.response["status"] == "failed" and lost.response["error"]["code"] == "worker_lost"
    assert SdkResponse.model_construct(**lost.response).status == "failed"
    send_task.assert_called_once_with("batches.run_background_response", args=[waiting.pk],
                                      queue=settings.TOLLGATE_QUEUES["default"])


def test_a_run_waiting_past_the_bound_is_sent_again_once_per_bound(alice: Party, bob: Party, settings: Any,
                                                                    send_task: mock.MagicMock) -> None:
    settings.TOLLGATE_RESPONSES_LOST_SECONDS = 600
    Tenant.objects.filter(pk=bob.tenant.pk).update(batch_tier="low")
    waiting = aged(store(bob, status="queued", background=True), 601)
    aged(store(alice, status="queued", background=True), 500)  # not yet
    assert background.resend_waiting(timezone.now()) == 1
    send_task.assert_called_once_with("batches.run_background_response", args=[waiting.pk],
                                      queue=settings.TOLLGATE_QUEUES["low"])
    assert background.resend_waiting(timezone.now()) == 0  # not again before another bound has passed
    assert StoredResponse.objects.get(pk=waiting.pk).status == "queued"


def test_a_broker_that_refuses_a_resend_leaves_it_for_the_next_run(alice: Party, settings: Any,
                                                                  send_task: mock.MagicMock) -> None:
    settings.TOLLGATE_RESPONSES_LOST_SECONDS = 600
    waiting = aged(store(alice, status="queued", background=True), 601)
    send_task.side_effect = ConnectionError("broker down")
    assert background.resend_waiting(timezone.now()) == 0
    send_task.side_effect = None
    assert background.resend_waiting(timezone.now() + timedelta(seconds=60)) == 1
    assert send_task.call_args.kwargs["args"] == [waiting.pk]


def test_expired_responses_are_deleted_in_bounded_chunks(alice: Party, bob: Party,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "CHUNK", 2)
    monkeypatch.setattr(background, "MOST_PER_RUN", 4)
    expired = [store(party, expires_in=timedelta(seconds=-1)) for party in (alice, alice, bob, bob, alice)]
    kept = [store(alice), store(bob, status="queued", background=True)]
    assert background.delete_expired(timezone.now()) == 4
    assert StoredResponse.objects.count() == 3  # one expired left for the next run
    tasks.tend_stored_responses.apply()
    assert set(StoredResponse.objects.values_list("pk", flat=True)) == {row.pk for row in kept}
    assert not StoredResponse.objects.filter(pk__in=[row.pk for row in expired]).exists()


def test_nothing_to_tend_is_quick_and_harmless(django_assert_max_num_queries: Any) -> None:
    # the lost runs query, the waiting runs query, the expired ids query
    with django_assert_max_num_queries(3):
        background.tend()
