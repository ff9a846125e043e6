"""Prometheus metrics of the /v1 path and the Celery tasks, registered at startup when TOLLGATE_METRICS is on.

The observer (see proxy/observe.py) runs on the event loop inside every request: it only adds to plain dicts
(Tally), with the labelled children cached per label tuple; a thread of its own writes them to prometheus_client's
memory-mapped files once a second, and refreshes the values that change without a request (deployments cooling
down, rows spooled during a database outage) every few seconds. gateway_site/metrics.py serves them.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from . import breaker, observe, routing

if TYPE_CHECKING:
    from .metering import Meter

logger = logging.getLogger(__name__)

# From a cached embedding (about a millisecond) to a long completion (the upstream read timeout's default, 120 s).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Tollgate's own time per request is a fraction of a millisecond to a few (a large prompt's tokenizing).
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LEDGER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
REFRESH_SECONDS = 5.0
FLUSH_SECONDS = 1.0  # how late a scrape may see this process's /v1 values (see Tally)
PICOS_PER_DOLLAR = 10**12

AUTH_CODES = frozenset({"invalid_api_key", "tenant_inactive"})
MODEL_CODES = frozenset({"model_not_found", "model_not_allowed"})
REFUSED = frozenset({"rejected", "gateway_unavailable"})  # end reasons of requests Tollgate turned away


def refusal_reason(end_reason: str, status: int, error_code: str) -> str | None:
    """Why Tollgate refused a request (budget, rate, model, auth, invalid, other), or None if it did not."""
    if end_reason not in REFUSED:
        return None
    if error_code == "insufficient_quota":  # a budget with no room, or a worst case above a whole budget
        return "budget"
    if error_code == "rate_limit_exceeded":  # a rate limit, or a request above a whole tokens-per-minute limit
        return "rate"
    if error_code in MODEL_CODES:
        return "model"
    if status == 401 or error_code in AUTH_CODES:
        return "auth"
    if 400 <= status < 500:  # bad JSON or fields, too large, too slow to arrive, wrong method
        return "invalid"
    return "other"  # 503: Redis or the database down (fail closed)


def upstream_error_kind(end_reason: str, status: int, error_code: str) -> str | None:
    """How the provider failed a request (timeout, connect, status_4xx, status_5xx, cut, other), or None."""
    if end_reason == "timeout" or error_code == "upstream_timeout":
        return "timeout"
    if end_reason == "upstream_cut":
        return "cut"
    if end_reason != "upstream_error":
        return None
    if error_code == "upstream_unreachable":
        return "connect"
    # The client sees 502 for the provider's 401/403/404 (Tollgate's configuration, not the client's fault).
    if error_code in ("upstream_auth_failed", "upstream_model_not_found") or 400 <= status < 500:
        return "status_4xx"
    if error_code == "upstream_error":  # an upstream 5xx, or an answer Tollgate could not read
        return "status_5xx"
    return "other"


class Labelled:
    """A labelled metric whose children are looked up once per label tuple, then from a plain dict."""

    __slots__ = ("metric", "children")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


class Tally:
    """The /v1 path's increments, kept in plain dicts and written to prometheus_client's values once a second.

    Writing one value to the multiprocess files takes a lock and a memory-mapped write (2-4 µs) and a request
    makes about ten; adding to a dict here is a fraction of that. So a scrape sees each process's /v1 values up
    to FLUSH_SECONDS late, and a process writes what it still holds when it exits (atexit).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.amounts: dict[Any, float] = {}  # counter or gauge child -> amount to add
        self.observed: dict[Any, list[float]] = {}  # histogram child -> [sum, count per bucket...]

    def add(self, child: Any, amount: float = 1.0) -> None:
        with self.lock:
            self.amounts[child] = self.amounts.get(child, 0.0) + amount

    def observe(self, child: Any, amount: float) -> None:
        bounds = child._upper_bounds  # ends with +Inf, so every amount has a bucket
        with self.lock:
            tally = self.observed.get(child)
            if tally is None:
                tally = self.observed[child] = [0.0] * (len(bounds) + 1)
            tally[0] += amount
            tally[1 + bisect_left(bounds, amount)] += 1  # the first bucket whose bound is >= amount, as observe()

    def flush(self) -> None:
        with self.lock:
            amounts, self.amounts = self.amounts, {}
            observed, self.observed = self.observed, {}
        for child, amount in amounts.items():
            child.inc(amount)
        for child, tally in observed.items():
            # Histogram.observe() adds to _sum and to one bucket; this adds the same, many observations at once.
            child._sum.inc(tally[0])
            for bucket, count in zip(child._buckets, tally[1:]):
                if count:
                    bucket.inc(count)


class PrometheusObserver:
    def __init__(self, *, tenant_label: bool) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.tenant_label = tenant_label
        labels = ["endpoint", "model", "provider", "status_class", "end_reason"] + (["tenant"] if tenant_label else [])
        self.requests = Labelled(Counter("tollgate_requests", "Requests to /v1 by how they ended.", labels, registry=None))
        timing = ["endpoint", "model", "provider"]
        self.duration = Labelled(Histogram("tollgate_request_duration_seconds", "Whole request time, as the ledger's "
                                           "latency.", timing, buckets=DURATION_BUCKETS, registry=None))
        self.ttfb = Labelled(Histogram("tollgate_time_to_first_byte_seconds", "Time to the provider's first event "
                                       "(streams) or whole answer.", timing, buckets=DURATION_BUCKETS, registry=None))
        self.overhead = Labelled(Histogram("tollgate_overhead_seconds", "Tollgate's own time: the request's time minus "
                                           "the wait on the provider.", ["endpoint"], buckets=OVERHEAD_BUCKETS,
                                           registry=None))
        priced = ["model", "provider"]
        self.prompt_tokens = Labelled(Counter("tollgate_prompt_tokens", "Prompt tokens in ledger rows.", priced,
                                              registry=None))
        self.completion_tokens = Labelled(Counter("tollgate_completion_tokens", "Completion tokens in ledger rows.",
                                                  priced, registry=None))
        self.cost = Labelled(Counter("tollgate_cost_dollars", "Cost in ledger rows, US dollars.", priced, registry=None))
        self.refusals = Labelled(Counter("tollgate_refusals", "Requests Tollgate refused, by reason.", ["reason"],
                                         registry=None))
        self.upstream_errors = Labelled(Counter("tollgate_upstream_errors", "Requests that ended in a provider "
                                                "failure, by kind.", ["provider", "kind"], registry=None))
        self.in_flight = Gauge("tollgate_requests_in_flight", "/v1 requests being served.", registry=None,
                               multiprocess_mode="livesum")
        self.ledger_write = Histogram("tollgate_ledger_write_seconds", "From a request's end to its ledger row built "
                                      "and written (or spooled).", buckets=LEDGER_BUCKETS, registry=None)
        self.spooled = Gauge("tollgate_ledger_spooled_rows", "Ledger rows waiting for the database.", registry=None,
                             multiprocess_mode="livesum")
        # 1 when any live process has the deployment sitting out after failures.
        self.cooling = Labelled(Gauge("tollgate_deployment_cooling_down", "1 while a deployment sits out after "
                                      "failures.", ["provider", "deployment"], registry=None, multiprocess_mode="livemax"))
        # Every process mirrors the fleet's breakers (proxy/breaker.py), so the highest value is the fleet's.
        self.breaker_state = Labelled(Gauge("tollgate_breaker_state", "Circuit breaker of each deployment: 0 closed, "
                                            "1 open, 2 half-open.", ["provider", "deployment"], registry=None,
                                            multiprocess_mode="livemax"))
        self.breaker_trips = Labelled(Counter("tollgate_breaker_trips", "Times a deployment's circuit breaker opened "
                                              "(tripped, or reopened by a failed probe).", ["provider", "deployment"],
                                              registry=None))
        self.trips_counted: dict[int, int] = {}
        self.tasks = Labelled(Counter("tollgate_celery_tasks", "Celery tasks run, by final state.", ["task", "state"],
                                      registry=None))
        self.task_failures = Labelled(Counter("tollgate_celery_task_failures", "Celery tasks that raised.", ["task"],
                                              registry=None))
        self.task_duration = Labelled(Histogram("tollgate_celery_task_duration_seconds", "Celery task run time.",
                                                ["task"], buckets=TASK_BUCKETS, registry=None))
        self.task_started: dict[str, float] = {}
        self.tally = Tally()
        self.refresher: threading.Thread | None = None

    # --- the /v1 path (observe.Observer)

    def request_started(self, meter: Meter) -> None:
        self.tally.add(self.in_flight, 1.0)
        if self.refresher is None:
            self.start_refresher()

    def request_ended(self, meter: Meter, *, end_reason: str, status: int, error_code: str) -> None:
        now = meter.ended or time.perf_counter()  # the meter notes when the outcome was known
        tally = self.tally
        tally.add(self.in_flight, -1.0)
        target, endpoint = meter.target, meter.endpoint
        # Labels come from the route, never from what the client sent: an unknown model name is not a new series.
        model, provider = (target.public_model, target.provider_name) if target is not None else ("", "")
        labels = (endpoint, model, provider, f"{status // 100}xx", end_reason)
        if self.tenant_label:
            labels += (meter.caller.tenant_slug if meter.caller is not None else "",)
        tally.add(self.requests(*labels))
        tally.observe(self.duration(endpoint, model, provider), now - meter.started)
        if meter.first_byte is not None:
            tally.observe(self.ttfb(endpoint, model, provider), meter.first_byte - meter.started)
        # A stream's own time is what came before its first event, like the x-tollgate-overhead-ms header.
        until = meter.first_byte if meter.streaming and meter.first_byte is not None else now
        tally.observe(self.overhead(endpoint), max(0.0, until - meter.started - meter.upstream_seconds))
        if (reason := refusal_reason(end_reason, status, error_code)) is not None:
            tally.add(self.refusals(reason))
        if (kind := upstream_error_kind(end_reason, status, error_code)) is not None:
            tally.add(self.upstream_errors(provider, kind))

    def row_written(self, meter: Meter, record: Any) -> None:
        ended = meter.ended
        tally = self.tally
        if ended is not None:
            tally.observe(self.ledger_write, time.perf_counter() - ended)
        target = meter.target
        model, provider = (target.public_model, target.provider_name) if target is not None else ("", "")
        if record.prompt_tokens:
            tally.add(self.prompt_tokens(model, provider), record.prompt_tokens)
        if record.completion_tokens:
            tally.add(self.completion_tokens(model, provider), record.completion_tokens)
        if record.cost_picos:
            tally.add(self.cost(model, provider), record.cost_picos / PICOS_PER_DOLLAR)

    # --- values that change without a request

    def start_refresher(self) -> None:
        self.refresher = threading.Thread(target=self.refresh_forever, name="metrics-refresh", daemon=True)
        self.refresher.start()

    def refresh_forever(self) -> None:
        refreshed = 0.0
        while True:
            try:
                self.tally.flush()
                if time.monotonic() - refreshed >= REFRESH_SECONDS:
                    refreshed = time.monotonic()
                    self.refresh()
            except Exception:
                logger.exception("metrics: refreshing the process's gauges failed")
            time.sleep(FLUSH_SECONDS)

    def refresh(self) -> None:
        from billing import ledger

        self.spooled.set(ledger.spooled())
        table = routing._table  # this process's routing table as last loaded; None until the first request routes
        if table is None:
            return
        circuit = breaker.get()
        seen: set[int] = set()
        for choices in table.routes.values():
            for choice in choices:
                target = choice.target
                if target.deployment_id not in seen:
                    seen.add(target.deployment_id)
                    labels = (target.provider_name, str(target.deployment_id))
                    state = breaker.STATE_NUMBERS[circuit.state(target.deployment_id)]  # read only: no probe taken
                    self.cooling(*labels).set(1 if state else 0)
                    self.breaker_state(*labels).set(state)
                    trips = circuit.trips.get(target.deployment_id, 0)
                    if trips != (counted := self.trips_counted.get(target.deployment_id, 0)):
                        if trips > counted:  # fewer: the breaker was made anew (tests), nothing to add
                            self.breaker_trips(*labels).inc(trips - counted)
                        self.trips_counted[target.deployment_id] = trips

    # --- Celery tasks (signal receivers)

    def task_prerun(self, task_id: str = "", **_: Any) -> None:
        self.task_started[task_id] = time.perf_counter()

    def task_postrun(self, task_id: str = "", task: Any = None, state: str | None = None, **_: Any) -> None:
        name = getattr(task, "name", None) or "unknown"
        started = self.task_started.pop(task_id, None)
        if started is not None:
            self.task_duration(name).observe(time.perf_counter() - started)
        self.tasks(name, (state or "unknown").lower()).inc()

    def task_failure(self, sender: Any = None, **_: Any) -> None:
        self.task_failures(getattr(sender, "name", None) or "unknown").inc()


_observer: PrometheusObserver | None = None


def install() -> None:
    """Register the observer and the Celery signal receivers when TOLLGATE_METRICS is on (proxy/apps.py ready())."""
    global _observer
    if not settings.TOLLGATE_METRICS or _observer is not None:
        return
    from celery import signals

    from gateway_site import metrics as site_metrics

    try:
        site_metrics.prepare(Path(settings.TOLLGATE_METRICS_DIR))
    except OSError as e:
        logger.error("metrics are off: cannot use TOLLGATE_METRICS_DIR %s (%s)", settings.TOLLGATE_METRICS_DIR, e)
        return
    _observer = PrometheusObserver(tenant_label=settings.TOLLGATE_METRICS_TENANT_LABEL)
    observe.register(_observer)
    atexit.register(_observer.tally.flush)  # what the last second of requests added, before the process goes
    signals.task_prerun.connect(_observer.task_prerun, weak=False, dispatch_uid="tollgate-metrics-prerun")
    signals.task_postrun.connect(_observer.task_postrun, weak=False, dispatch_uid="tollgate-metrics-postrun")
    signals.task_failure.connect(_observer.task_failure, weak=False, dispatch_uid="tollgate-metrics-failure")
    signals.worker_process_init.connect(forked_worker, weak=False, dispatch_uid="tollgate-metrics-fork")


def forked_worker(**_: Any) -> None:
    # A prefork child starts writing files under its own id: any file already there is from an earlier process.
    from gateway_site import metrics as site_metrics

    site_metrics.clean(Path(settings.TOLLGATE_METRICS_DIR), own_pid=os.getpid())
