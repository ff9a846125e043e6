"""The stored responses beat job: background runs whose worker was lost are failed, expired responses deleted."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from openai.types.responses import Response as SdkResponse

from batches import background, tasks
from proxy.models import StoredResponse

from ..conftest import Party
from ..dialects.stored import store

pytestmark = pytest.mark.django_db


def aged(row: StoredResponse, seconds: int) -> StoredResponse:
    StoredResponse.objects.filter(pk=row.pk).update(updated_at=timezone.now() - timedelta(seconds=seconds))
    return row


def test_the_schedule_runs_every_minute() -> None:
    task = PeriodicTask.objects.get(name="Tend stored responses")
    assert task.task == "batches.tend_stored_responses" and task.enabled
    assert (task.interval.every, task.interval.period) == (60, "seconds")


def test_runs_in_progress_past_the_bound_are_failed_as_worker_lost(alice: Party, settings: Any) -> None:
    settings.TOLLGATE_RESPONSES_LOST_SECONDS = 600
    lost = aged(store(alice, status="in_progress", background=True), 601)
    running = aged(store(alice, status="in_progress", background=True), 500)
    waiting = aged(store(alice, status="queued", background=True), 7200)  # a busy queue: still waiting its turn
    done = aged(store(alice, status="completed", background=True), 7200)
    tasks.tend_stored_responses.apply()
    statuses = dict(StoredResponse.objects.values_list("pk", "status"))
    assert statuses == {lost.pk: "failed", running.pk: "in_progress", waiting.pk: "queued", done.pk: "completed"}
    lost.refresh_from_db()
    assert lost.response["status"] == "failed" and lost.response["error"]["code"] == "worker_lost"
    assert SdkResponse.model_construct(**lost.response).status == "failed"


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
    # the lost runs query, the expired ids query
    with django_assert_max_num_queries(2):
        background.tend()
