"""Queue stats: lines waiting, running, done and failed per queue and per tenant, from rows written directly."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from accounts import services
from batches import stats
from batches.models import Batch

from ..conftest import Party
from .batch_rows import make_batch

pytestmark = pytest.mark.django_db


def token_client(user: User) -> Client:
    _, token = services.issue_management_token(user=user, name="test")
    return Client(headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def fleet(alice: Party, bob: Party) -> None:
    make_batch(alice, total=10, succeeded=3, failed=1, running=2)  # 4 waiting
    make_batch(alice, status=Batch.Status.VALIDATING)  # lines not known yet
    make_batch(alice, status=Batch.Status.CANCELLING, total=5, succeeded=1, running=1)  # 3 waiting
    make_batch(alice, status=Batch.Status.COMPLETED, total=4, succeeded=3, failed=1)
    make_batch(bob, queue="high", total=6, running=1)  # 5 waiting
    make_batch(bob, queue="high", status=Batch.Status.CANCELLED, total=3, succeeded=1, failed=2)
    make_batch(bob, queue="gpu", total=2, succeeded=2)  # a route's own queue


def test_counts_per_tenant_and_queue(fleet: None) -> None:
    found = stats.queue_stats()
    alice = found.tenants[("default", "alice")]
    assert (alice.depth, alice.waiting_batches, alice.running, alice.done, alice.failed) == (7, 1, 3, 7, 2)
    assert alice.batches["in_progress"] == 1 and alice.batches["validating"] == 1
    assert alice.batches["cancelling"] == 1 and alice.batches["completed"] == 1 and alice.batches["failed"] == 0
    bob_high = found.tenants[("high", "bob")]
    assert (bob_high.depth, bob_high.running, bob_high.done, bob_high.failed) == (5, 1, 1, 2)
    assert bob_high.batches["cancelled"] == 1
    assert found.tenants[("gpu", "bob")].depth == 0 and found.tenants[("gpu", "bob")].done == 2


def test_every_configured_queue_is_listed_and_sums_its_tenants(fleet: None) -> None:
    found = stats.queue_stats()
    assert list(found.queues)[:3] == ["high", "default", "low"] and "gpu" in found.queues
    assert found.queues["low"].as_dict() == {"depth": 0, "waiting_batches": 0, "running": 0, "done": 0, "failed": 0,
                                             "batches": dict.fromkeys(stats.STATUSES, 0)}
    assert found.queues["default"].depth == 7 and found.queues["high"].depth == 5
    assert sum(q.running for q in found.queues.values()) == 4


def test_a_tenant_filter_counts_only_that_tenant(fleet: None, bob: Party) -> None:
    found = stats.queue_stats(tenant_ids=[bob.tenant.pk])
    assert {tenant for _, tenant in found.tenants} == {"bob"}
    assert found.queues["default"].depth == 0 and found.queues["high"].depth == 5


def test_stats_take_two_queries_whatever_the_number_of_batches(fleet: None, alice: Party,
                                                             django_assert_num_queries: object) -> None:
    for _ in range(5):
        make_batch(alice, total=3, succeeded=1, running=1)
    # batches grouped by queue, tenant and status; running lines grouped the same way
    with django_assert_num_queries(2):  # type: ignore[operator]
        found = stats.queue_stats()
    assert found.tenants[("default", "alice")].depth == 7 + 5


def test_no_batches_gives_zeros(db: None) -> None:
    found = stats.queue_stats()
    assert found.tenants == {} and all(c.depth == 0 and c.done == 0 for c in found.queues.values())


def test_the_queues_api_is_for_operators(fleet: None, alice: Party) -> None:
    operator = token_client(User.objects.create_user("ops", is_staff=True))
    body = operator.get("/api/queues/").json()
    by_queue = {row["queue"]: row for row in body["queues"]}
    assert by_queue["default"]["depth"] == 7 and by_queue["default"]["tier"] == "default"
    assert by_queue["gpu"]["tier"] is None and by_queue["gpu"]["done"] == 2
    rows = {(row["queue"], row["tenant"]): row for row in body["tenants"]}
    assert rows[("high", "bob")]["running"] == 1 and rows[("default", "alice")]["batches"]["validating"] == 1
    owner = token_client(alice.user)
    refused = owner.get("/api/queues/")
    assert refused.status_code == 403 and "operators" in refused.json()["detail"]
    assert "tenants" not in refused.json()
    assert Client().get("/api/queues/").status_code in (401, 403)
    assert operator.post("/api/queues/", {}, content_type="application/json").status_code == 405


def test_the_schema_documents_the_queues_endpoint(db: None) -> None:
    operator = token_client(User.objects.create_user("ops", is_staff=True))
    schema = operator.get("/api/schema/?format=json").json()
    get = schema["paths"]["/api/queues/"]["get"]
    assert {"200", "401", "403"} <= set(get["responses"])
    counts = schema["components"]["schemas"]["QueueCounts"]["properties"]
    assert {"queue", "tier", "depth", "running", "done", "failed", "waiting_batches", "batches"} <= set(counts)


def test_metrics_give_lines_and_batches_per_queue(fleet: None) -> None:
    from gateway_site import metrics

    families = {family.name: family for family in metrics.batch_families(metrics.batch_queues())}
    lines = {(s.labels["queue"], s.labels["state"]): s.value for s in families["tollgate_batch_lines"].samples}
    assert lines[("default", "waiting")] == 7 and lines[("default", "running")] == 3
    assert lines[("default", "succeeded")] == 7 and lines[("default", "failed")] == 2
    assert lines[("high", "waiting")] == 5 and lines[("low", "waiting")] == 0 and lines[("gpu", "succeeded")] == 2
    batches = {(s.labels["queue"], s.labels["status"]): s.value for s in families["tollgate_batches"].samples}
    assert batches[("default", "validating")] == 1 and batches[("high", "cancelled")] == 1
    assert batches[("low", "in_progress")] == 0
    assert list(metrics.batch_families(None)) == []  # a failed reading leaves the families out of the scrape


@pytest.mark.django_db(transaction=True)
def test_a_scrape_carries_the_batch_gauges(alice: Party) -> None:
    from gateway_site import metrics

    if not metrics.enabled():
        pytest.skip("TOLLGATE_METRICS is off in this test run")
    make_batch(alice, queue="scrape-test", total=3, running=1)
    metrics.SOURCES["batches"].read_at = float("-inf")  # no reading cached by an earlier test
    text = metrics.render().decode()
    assert 'tollgate_batch_lines{queue="scrape-test",state="waiting"} 2.0' in text
    assert 'tollgate_batches{queue="scrape-test",status="in_progress"} 1.0' in text
