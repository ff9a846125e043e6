"""How the metrics observer names what happened to a request: refusal reasons and upstream failure kinds."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import errors
from proxy.metrics import Labelled, refusal_reason, upstream_error_kind
from proxy.providers import http


def ended(error: errors.GatewayError) -> tuple[str, int, str]:
    """What Meter.record is called with when ``error`` ends a request (as proxy/views.py does)."""
    return error.end_reason, error.status, error.code or ""


@pytest.mark.parametrize(("error", "reason"), [
    (errors.BudgetExceeded("no room"), "budget"),
    (errors.NeverFits("more than the whole budget"), "budget"),
    (errors.RateLimited("slow down", retry_after=3), "rate"),
    (errors.TooManyTokens("more than a whole minute's tokens"), "rate"),
    (errors.ModelNotFound("nope"), "model"),
    (errors.PermissionDenied("not for this key", code="model_not_allowed"), "model"),
    (errors.AuthenticationFailed("bad key"), "auth"),
    (errors.PermissionDenied("tenant off", code="tenant_inactive"), "auth"),
    (errors.GatewayError("bad json", code="invalid_json"), "invalid"),
    (errors.PayloadTooLarge("too big"), "invalid"),
    (errors.RequestTimeout("too slow"), "invalid"),
    (errors.MethodNotAllowed("POST only"), "invalid"),
    (errors.ServiceUnavailable("Redis down"), "other"),
])
def test_refusals_are_named_by_reason(error: errors.GatewayError, reason: str) -> None:
    assert refusal_reason(*ended(error)) == reason
    assert upstream_error_kind(*ended(error)) is None


def test_answers_and_failures_are_not_refusals() -> None:
    assert refusal_reason("complete", 200, "") is None
    assert refusal_reason("client_gone", 499, "") is None
    assert refusal_reason(*ended(errors.ServerError("bug"))) is None
    assert refusal_reason(*ended(http.transport_error(ConnectionError()))) is None


class Reply:
    def __init__(self, status: int) -> None:
        self.status_code, self.headers, self.content = status, {}, b'{"error": {"code": "some_code"}}'


@pytest.mark.parametrize(("error", "kind"), [
    (http.transport_error(TimeoutError()), "timeout"),
    (http.transport_error(ConnectionError()), "connect"),
    (http.stream_error(TimeoutError()), "timeout"),
    (http.stream_error(ConnectionError()), "cut"),
    (http.status_error(Reply(400)), "status_4xx"),  # type: ignore[arg-type]
    (http.status_error(Reply(401)), "status_4xx"),  # type: ignore[arg-type]
    (http.status_error(Reply(404)), "status_4xx"),  # type: ignore[arg-type]
    (http.status_error(Reply(429)), "status_4xx"),  # type: ignore[arg-type]
    (http.status_error(Reply(500)), "status_5xx"),  # type: ignore[arg-type]
    (http.status_error(Reply(503)), "status_5xx"),  # type: ignore[arg-type]
])
def test_upstream_failures_are_named_by_kind(error: errors.ProviderError, kind: str) -> None:
    assert upstream_error_kind(*ended(error)) == kind
    assert refusal_reason(*ended(error)) is None


def test_labelled_children_are_looked_up_once() -> None:
    calls: list[tuple[str, ...]] = []

    class Metric:
        def labels(self, *values: str) -> object:
            calls.append(values)
            return object()

    labelled = Labelled(Metric())
    first = labelled("chat", "mock")
    assert labelled("chat", "mock") is first
    assert labelled("embeddings", "mock") is not first
    assert calls == [("chat", "mock"), ("embeddings", "mock")]


@pytest.mark.django_db
def test_a_tripped_deployment_shows_as_cooling_down(mock_upstream_url: str, monkeypatch: pytest.MonkeyPatch,
                                                    settings: Any) -> None:
    from asgiref.sync import async_to_sync
    from prometheus_client.parser import text_string_to_metric_families

    from gateway_site import metrics as site_metrics
    from proxy import breaker, metrics, routing

    from ..factories import make_route

    if metrics._observer is None:
        pytest.skip("TOLLGATE_METRICS is off in this test run")
    settings.TOLLGATE_BREAKER_FAILURES = 3
    monkeypatch.setattr(breaker, "_breaker", breaker.Breaker(None))  # this process alone: no other test's Redis state
    make_route("flaky", upstream_model="mock-500", base_url=f"{mock_upstream_url}/v1", provider_name="flaky-provider")
    routing.invalidate()
    table = async_to_sync(routing.table)()
    target = table.routes["flaky"][0].target
    labels = {"provider": "flaky-provider", "deployment": str(target.deployment_id)}

    def value(name: str) -> float | None:
        metrics._observer.refresh()  # type: ignore[union-attr]  # what its thread does every few seconds
        metrics._observer.tally.flush()  # type: ignore[union-attr]
        for family in text_string_to_metric_families(site_metrics.render().decode()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return None

    try:
        assert value("tollgate_deployment_cooling_down") == 0 and value("tollgate_breaker_state") == 0
        trips_before = value("tollgate_breaker_trips_total") or 0.0
        for _ in range(3):
            routing.report(target, ok=False)
        assert value("tollgate_deployment_cooling_down") == 1
        assert value("tollgate_breaker_state") == 1  # open
        assert value("tollgate_breaker_trips_total") == trips_before + 1
        breaker.get().clock = lambda: breaker.time.time() + 31
        assert value("tollgate_breaker_state") == 2  # half-open, and reading it took no probe
        assert routing.is_healthy(target.deployment_id)
        routing.report(target, ok=True)
        assert value("tollgate_deployment_cooling_down") == 0 and value("tollgate_breaker_state") == 0
    finally:
        routing.invalidate()


def test_a_tally_flushed_writes_what_observing_each_value_would() -> None:
    """The /v1 path adds to a Tally; once flushed, the counters and histograms hold exactly what calling inc() and
    observe() once per value would have written (same buckets, sums and counts)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from proxy.metrics import DURATION_BUCKETS, Tally

    def metrics(registry: CollectorRegistry, prefix: str) -> tuple[Counter, Histogram]:
        # Names of their own: in multiprocess mode two metrics of one name share their values in this process's files.
        return (Counter(f"{prefix}c", "c", ["x"], registry=registry),
                Histogram(f"{prefix}h", "h", ["x"], buckets=DURATION_BUCKETS, registry=registry))

    direct, tallied = CollectorRegistry(), CollectorRegistry()
    (counter, histogram), (counter2, histogram2) = metrics(direct, "direct_"), metrics(tallied, "tallied_")
    tally = Tally()
    amounts = [0.0, 0.0005, 0.001, 0.0010001, 0.02, 0.025, 1.0, 3.3, 120.0, 500.0, 0.001, 7.5]
    for i, amount in enumerate(amounts):
        label = "ab"[i % 2]
        counter.labels(label).inc(amount)
        histogram.labels(label).observe(amount)
        tally.add(counter2.labels(label), amount)
        tally.observe(histogram2.labels(label), amount)
    def values(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        # Without the _created times, which differ; sums are added in another order, so compared to 1e-12.
        return {(sample.name.partition("_")[2], tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(generate_latest(registry).decode())
                for sample in family.samples if not sample.name.endswith("_created")}

    assert values(tallied) != values(direct)  # nothing written before the flush
    tally.flush()
    assert values(tallied) == pytest.approx(values(direct), rel=1e-12)
    assert values(tallied)[("h_bucket", (("le", "0.001"), ("x", "a")))] == 3  # 0.0 and twice 0.001 (<= bound)
    assert values(tallied)[("h_count", (("x", "b"),))] == 6
    tally.flush()  # a second flush with nothing new changes nothing
    assert values(tallied) == pytest.approx(values(direct), rel=1e-12)
