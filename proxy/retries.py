"""Retries before the first byte: after a failed attempt, where to try next and how long to wait first.

A transient failure (429, 5xx, a connection or read error) is retried on the same deployment after a backoff
(exponential with full jitter, or the provider's own Retry-After / retry-after-ms), while it is healthy and the
route's attempts and time budget allow; a benched deployment, or one whose retry cannot help (it refused our
credentials, it does not know the model), gives way to the next one at once. When the route's deployments are
spent, its fallback routes are tried in order; a prompt too long for the model switches to the route's
context-window fallbacks instead. Nothing here runs for a request whose first attempt succeeds.

Only opening an answer is retried: once a stream's first byte went to the client, a failure ends it in-band.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from django.conf import settings

from billing.journal import journal

from . import routing
from .errors import ProviderError
from .metering import Meter
from .providers.base import Target
from .providers.http import CONTEXT_WINDOW
from .routing import Group, Plan

T = TypeVar("T")

# A retry on the same deployment cannot help with these: it refused Tollgate's key, or does not know the model.
NOT_ON_SAME_DEPLOYMENT = frozenset({"upstream_auth_failed", "upstream_model_not_found"})

# The clock and the wait, replaced by a fake clock in tests.
sleep = asyncio.sleep
now = time.perf_counter


def hinted(error: ProviderError) -> float | None:
    """The wait the provider asked for, in seconds: retry-after-ms first, then Retry-After (seconds or an HTTP
    date), as the OpenAI SDKs read them; None without a usable hint."""
    for value, unit in ((error.retry_after_ms, 1000.0), (error.retry_after, 1.0)):
        if not value:
            continue
        try:
            seconds = float(value) / unit
        except ValueError:
            parsed = email.utils.parsedate_tz(value) if unit == 1.0 else None
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    return None


def backoff(retry: int) -> float:
    """Seconds before the ``retry``-th retry of one deployment: full jitter over an exponential bound."""
    base, cap = settings.TOLLGATE_RETRY_BACKOFF_MS / 1000, settings.TOLLGATE_RETRY_BACKOFF_MAX_MS / 1000
    return random.uniform(0, min(cap, base * 2 ** min(retry - 1, 30)))  # a huge exponent would overflow a float


def delay(error: ProviderError, retry: int) -> float:
    wait = hinted(error)
    return backoff(retry) if wait is None else wait


def first_of(group: Group) -> Target:
    return next((t for t in group.targets if routing.is_healthy(t.deployment_id)), group.targets[0])


def next_step(group: Group, target: Target, error: ProviderError, tried: dict[int, int],
              started: float) -> tuple[Target, float] | None:
    """The deployment of ``group`` to try next and the seconds to wait first, or None when the group is spent.

    The failed deployment is retried while healthy, keeping one attempt for each deployment not yet tried; a wait
    that would pass the time budget is not started (another deployment needs none). Health is asked only of the
    deployment about to be chosen: asking lets a half-open breaker's one probe through.
    """
    left = group.attempts - sum(tried.values())
    if left <= 0:
        return None
    elapsed = now() - started
    untried = [t for t in group.targets if t.deployment_id not in tried]

    def again() -> tuple[Target, float] | None:
        if error.code in NOT_ON_SAME_DEPLOYMENT or not routing.is_healthy(target.deployment_id):
            return None
        wait = delay(error, tried.get(target.deployment_id, 1))
        return (target, wait) if elapsed + wait <= group.budget_seconds else None

    if left > len(untried) and (step := again()) is not None:
        return step
    if elapsed <= group.budget_seconds:
        for other in untried:
            if routing.is_healthy(other.deployment_id):
                return other, 0.0
    return again() if left <= len(untried) else None  # the others are benched: this one after all


def attempt(target: Target, error: ProviderError | None, seconds: float, waited: float) -> dict[str, Any]:
    return {"deployment": target.deployment_id, "provider": target.provider_name, "model": target.upstream_model,
            "route": target.public_model, "status": error.status if error else 200,
            "error": error.code if error else None, "ms": round(seconds * 1000), "waited_ms": round(waited * 1000)}


def serving(target: Target | None) -> dict[str, str]:
    """What a ledger row names and is priced by."""
    if target is None:
        return {}
    return {"public_model": target.public_model, "provider": target.provider_name, "upstream_model": target.upstream_model}


def moved(meter: Meter, target: Target) -> None:
    """Note in the journal which deployment the request now asks: a process killed meanwhile bills that one."""
    journal().checkpoint(meter.request_id, "", serving=serving(target))


async def keep_trying(targets: list[Target], meter: Meter, call: Callable[[Target], Awaitable[T]],
                      error: ProviderError, started: float) -> T:
    """Go on after the first attempt failed with ``error``. Returns the first result; raises the last error.

    Every attempt is noted in the row's gate JSON ("attempts"), and a fallback that served (or was last tried) in
    "fallback"; meter.target is always the deployment tried last, so the row names and is priced by what served.
    """
    assert meter.target is not None and meter.caller is not None
    target = meter.target
    attempts = meter.gate["attempts"] = [attempt(target, error, time.perf_counter() - started, 0.0)]
    plan: Plan = meter.plan or await routing.plan(meter.caller, targets)
    queue, group = list(plan.groups[1:]), plan.groups[0]
    tried, group_started, on_context = {target.deployment_id: 1}, started, False
    while True:
        step = None
        if error.code == CONTEXT_WINDOW:
            if not on_context:  # the context-window fallbacks replace whatever was left
                queue, on_context = list(plan.context), True
        elif error.permanent:
            raise error
        else:
            routing.report(target, ok=False)  # a permanent error is the request's fault, not the deployment's
            step = next_step(group, target, error, tried, group_started)
        if step is None:
            if not queue:
                raise error
            group, tried, group_started = queue.pop(0), {}, now()
            meter.gate["fallback"] = {"from": plan.groups[0].model, "to": group.model,
                                      "reason": "context_window" if on_context else "error"}
            step = first_of(group), 0.0
        target, wait = step
        if wait:
            await sleep(wait)  # a client that leaves now cancels us here; the view writes its row
        if meter.begun and serving(target) != serving(meter.target):
            moved(meter, target)
        meter.target = target
        began = time.perf_counter()
        try:
            result = await call(target)
        except ProviderError as e:
            error = e
            tried[target.deployment_id] = tried.get(target.deployment_id, 0) + 1
            attempts.append(attempt(target, e, time.perf_counter() - began, wait))
            continue
        finally:
            # Waiting for the provider is upstream time too: the overhead header stays Tollgate's own work.
            meter.upstream_seconds += time.perf_counter() - began + wait
        attempts.append(attempt(target, None, time.perf_counter() - began, wait))
        return result
