"""Step two: the gate between a known caller and the provider: rate limits, then budgets.

Admitting a request takes a rate limit slot and holds its worst-case cost on every budget that applies;
the meter gives both back when the request ends, whichever way it ends (see Meter.record).
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from billing import holds, pricing, scripts
from billing.budgets import BudgetSpec, Check, Table, load_table, usd
from billing.models import Price

from . import outages, ratelimits, routing, sizing
from .db import db_step
from .errors import BudgetExceeded, NeverFits, RateLimited, TooManyTokens
from .metering import Meter
from .providers.base import ApiRequest, Target
from .ratelimits import RedisLimiter, Scope, Verdict, limiter

_budgets: Table | None = None
RETRY_SECONDS = 1.0  # an outage keeps the last budget table; a reload is tried again after this long


async def budget_table() -> Table:
    global _budgets
    if _budgets is None or time.monotonic() - _budgets.loaded_at > settings.TOLLGATE_ROUTES_CACHE_SECONDS:
        try:
            _budgets = await db_step(load_table)()
        except Exception as e:
            if _budgets is None or outages.dependency_of(e) is None:
                raise
            outages.note("database", e)  # budgets rarely change: keep enforcing the last known ones
            _budgets = replace(_budgets, loaded_at=time.monotonic() - settings.TOLLGATE_ROUTES_CACHE_SECONDS
                               + RETRY_SECONDS)
    return _budgets


def forget_budgets() -> None:
    global _budgets
    _budgets = None


def dollars(micros: int) -> str:
    return usd(max(micros, 0))  # to the micro-dollar under a cent: "$0.00 remains" hid what was left


def worst_cases(body: ApiRequest, targets: list[Target]) -> dict[str, sizing.Worst]:
    """Return the worst case for each upstream model of the targets (each model counts with its own tokenizer)."""
    sizes: dict[str, sizing.Worst] = {}
    for target in targets:
        if target.upstream_model not in sizes:
            sizes[target.upstream_model] = sizing.worst_case(body, target.upstream_model)
    return sizes


async def count_images(meter: Meter, targets: list[Target]) -> None:
    """Note the request's images on the meter when a deployment that may serve charges per image, for a request no
    budget or token limit sized (sizing counts them otherwise). Counting walks the messages, off the loop when large."""
    body = meter.body
    assert body is not None
    prices = await pricing.table()
    if not prices.per_image:  # the usual case: no price charges per image, so there is nothing to count
        return
    on = timezone.now().date()
    if not any((price := prices.find(public_model=t.public_model, provider=t.provider_name,
                                     upstream_model=t.upstream_model, on=on)) is not None and price.per_image
               for t in targets):
        return
    meter.images = await asyncio.to_thread(sizing.count_images, body) if body.is_large else sizing.count_images(body)


async def check_limits(meter: Meter, targets: list[Target]) -> None:
    """Admit the request or raise BudgetExceeded / RateLimited / NeverFits / ServiceUnavailable.

    Admitted requests leave a slot and a hold on the meter."""
    caller, body = meter.caller, meter.body
    assert caller is not None and body is not None
    table = await budget_table()
    # The model a budget sees is the canonical route name, the one the ledger row stores.
    specs = table.applicable(caller.tenant_id, caller.key_id, caller.project_id, targets[0].public_model, meter.tags,
                             meter.end_user)
    if table.has_model_budgets(caller.tenant_id):
        meter.plan = await same_budgets_plan(table, meter, targets, specs)
    scopes = [s for s in (Scope("key", caller.key_prefix, caller.key_limits, caller.tenant_id),
                          Scope("tenant", caller.tenant_slug, caller.tenant_limits, caller.tenant_id)) if s.limits]
    if not specs and not scopes:
        await count_images(meter, targets)
        return
    now = timezone.now()
    # The request is sized only when a budget or a token limit needs it, always in a worker thread: a large
    # prompt takes milliseconds to tokenize and must never stall the event loop.
    counted = bool(specs) or any(s.limits.tokens_per_minute is not None for s in scopes)
    # A budget holds for every deployment that might serve, fallbacks included: a retry or a fallback never
    # reaches a dearer model than the one held for (proxy/retries.py keeps to this plan).
    chain = targets[:1]
    if specs:
        meter.plan = meter.plan or await routing.plan(caller, targets)
        chain = meter.plan.targets()
    sizes = await asyncio.to_thread(worst_cases, body, chain) if counted else {}
    worst = max(sizes.values(), key=lambda w: w.total_tokens) if sizes else None
    prompt, completion = (worst.prompt_tokens, worst.completion_tokens) if worst else (0, 0)
    if worst is None:
        await count_images(meter, targets)
    else:
        meter.images = worst.images
        meter.prompt_tokens = prompt
        meter.gate["worst_case_tokens"] = [prompt, completion]
        never_fits_rates(scopes, prompt + completion)
    amount = 0
    if specs:
        amount = chain_hold(meter, specs, await pricing.table(), chain, sizes, now.date())
        never_fits_budgets(specs, amount)
    asking = asyncio.ensure_future(take(meter.request_id, scopes, prompt + completion, specs, amount, now))
    try:
        verdict, hold = await asyncio.shield(asking)
    except asyncio.CancelledError:
        # The client left while the answer was on its way: whatever it grants goes straight back.
        asking.add_done_callback(functools.partial(give_back, meter.request_id, scopes))
        raise
    except Exception as e:
        if (error := outages.unavailable(e)) is not None:
            raise error from None
        raise
    if verdict is not None:
        meter.gate["rate"] = verdict.as_json()
        if not verdict.admitted:
            if hold is not None and hold.admitted:
                await holds.backend().settle(hold, 0)  # asked in the same round trip; nothing was spent
            assert verdict.scope is not None
            what = {"requests": "requests per minute", "tokens": "tokens per minute", "concurrent": "requests in flight"}
            raise RateLimited(f"Rate limit reached for this {verdict.scope.name}: {verdict.limit} {what[verdict.kind]}. "
                              f"Try again in {verdict.retry_after} s.", retry_after=verdict.retry_after)
        meter.scopes, meter.verdict = scopes, verdict
    if hold is not None:
        meter.gate["budgets"] = [c.as_json() for c in hold.checks]
        meter.gate["held_micros"] = amount
        if not hold.admitted:
            check = hold.denied_by or hold.checks[0]
            # The beat's alert job finds the first refusal of each hard budget in a period by this id: no query here.
            meter.gate["denied_by"] = check.spec.id
            raise BudgetExceeded(refusal(check, amount))
        meter.hold = hold


async def same_budgets_plan(table: Table, meter: Meter, targets: list[Target],
                            specs: tuple[BudgetSpec, ...]) -> routing.Plan:
    """The request's plan less the deployments whose route other budgets cover than the first's.

    A fallback (or an alias shared by routes) may serve another public model, and the ledger row names the one that
    served: serving only where exactly the budgets held for apply keeps their totals equal to the ledger."""
    caller = meter.caller
    assert caller is not None
    plan = await routing.plan(caller, targets)
    held = {s.id for s in specs}
    others = {t.deployment_id for t in plan.targets() if t.public_model != targets[0].public_model
              and {s.id for s in table.applicable(caller.tenant_id, caller.key_id, caller.project_id, t.public_model,
                                                  meter.tags, meter.end_user)} != held}
    return plan.without(others) if others else plan


def refusal(check: Check, amount: int) -> str:
    """Why a hard budget refused: it is used up, or what is left is less than this request's worst case."""
    spec, spent, held = check.spec, check.spent_micros, check.reserved_micros
    budget = f"{budget_words(spec)} ({dollars(spec.limit_micros)})"
    in_flight = f" ({dollars(held)} more is held by requests in flight)" if held else ""
    if spent + held >= spec.limit_micros:
        return (f"You reached {budget}: {dollars(spent)} is spent{in_flight}. Requests are refused until the period "
                "ends or the budget is raised.")
    return (f"This request would exceed {budget}: {dollars(spec.limit_micros - spent - held)} remains{in_flight} and "
            f"this request may cost up to {dollars(amount)} (its prompt and max_tokens at the model's price). Send a "
            "shorter prompt or a lower max_tokens.")


def budget_words(spec: BudgetSpec) -> str:
    """"the month budget of this key", or of a narrower budget its scope: "the day budget for model gpt-4o*"."""
    return f"the {spec.period} budget for {spec.label}" if spec.label else f"the {spec.period} budget of this {spec.scope}"


def never_fits_rates(scopes: list[Scope], tokens: int) -> None:
    """Refuse for good a request larger than a whole tokens-per-minute limit: waiting a minute cannot help."""
    for scope in scopes:
        limit = scope.limits.tokens_per_minute
        if limit is not None and tokens > limit:
            raise TooManyTokens(f"Request too large for this {scope.name}: it may use up to {tokens} tokens "
                                f"(prompt and completion), more than its whole limit of {limit} tokens per minute. "
                                "Send a shorter prompt or a lower max_tokens.")


def never_fits_budgets(specs: tuple[BudgetSpec, ...], amount: int) -> None:
    """Refuse for good a request whose worst case is more than a hard budget's whole amount."""
    for spec in specs:
        if spec.hard and amount > spec.limit_micros + holds.overdraft():
            whole = budget_words(spec).replace("the ", "the whole ", 1)
            raise NeverFits(f"This request may cost up to {dollars(amount)}, more than {whole} "
                            f"({dollars(spec.limit_micros)}). Send a shorter prompt or a lower max_tokens, or ask for a "
                            "larger budget.")


def give_back(request_id: str, scopes: list[Scope], asking: asyncio.Future[Any]) -> None:
    if asking.cancelled() or asking.exception() is not None:
        return
    verdict, hold = asking.result()

    async def release() -> None:
        if hold is not None and hold.admitted:
            await holds.backend().settle(hold, 0)
        if verdict is not None and verdict.admitted:
            await limiter().release(request_id, scopes)

    Meter.keep(asyncio.ensure_future(release()))


def chain_hold(meter: Meter, specs: tuple, prices: pricing.PriceTable, chain: list[Target],
               sizes: dict[str, sizing.Worst], on: date) -> int:
    """What to hold: the worst case of the dearest deployment that might serve. The first deployment's price decides
    whether the request is unpriced; a later one without a price is left out of the plan where unpriced models
    are denied (it could not be held for), and otherwise may serve unpriced, as the first one would."""
    first, *rest = chain
    find = functools.partial(prices.find, on=on)
    amount = hold_amount(meter, specs, find(public_model=first.public_model, provider=first.provider_name,
                                            upstream_model=first.upstream_model), sizes[first.upstream_model])
    unpriced: set[int] = set()
    for target in rest:
        price = find(public_model=target.public_model, provider=target.provider_name,
                     upstream_model=target.upstream_model)
        if price is None:
            unpriced.add(target.deployment_id)
        else:
            amount = max(amount, worst_micros(price, sizes[target.upstream_model]))
    if unpriced and meter.plan is not None and settings.TOLLGATE_UNPRICED == "deny" and any(s.hard for s in specs):
        meter.plan = meter.plan.without(unpriced)
    return amount


def hold_amount(meter: Meter, specs: tuple, price: Price | None, worst: sizing.Worst) -> int:
    """What to hold on the budgets: the worst case at the price, capped. Raises BudgetExceeded for unpriced models
    when so configured."""
    if price is None:
        meter.gate["unpriced"] = True
        if settings.TOLLGATE_UNPRICED == "deny" and any(s.hard for s in specs):
            raise BudgetExceeded("This model has no price yet, and this key's budgets only admit priced models. "
                                 "Ask your Tollgate operator to add a price.")
        return 0
    # The whole worst case, never capped: an undersized hold is how a budget gets overspent.
    return worst_micros(price, worst)


def worst_micros(price: Price, worst: sizing.Worst) -> int:
    """The most the request can cost at the price: every prompt token (with the margin for a tokenizer Tollgate does
    not ship) at the dearest prompt price (cache writes cost more than input), its most completion tokens, and its
    images at the per-image price."""
    return price.worst_micros(prompt_tokens=worst.held_prompt_tokens, completion_tokens=worst.completion_tokens,
                              images=worst.images)


async def take(request_id: str, scopes: list[Scope], tokens: int, specs: tuple, amount: int,
               now: datetime) -> tuple[Verdict | None, holds.Hold | None]:
    """Ask the rate limits, then the budgets. With Redis both go in one round trip; a rate limit refusal
    then comes back with a hold that the caller gives back.

    If Redis fails, a script may still have run (a timeout after Redis did the work): whatever it may have
    taken is given back in the background, and the error is raised.
    """
    rates, budgets = limiter(), holds.backend()
    hold_keys: list[str] = []
    try:
        if scopes and specs and isinstance(rates, RedisLimiter) and isinstance(budgets, holds.RedisBackend):
            check, at = rates.check(request_id, scopes, tokens)
            pending = budgets.pending(request_id, specs, amount, now)
            hold_keys = pending.call.keys[:-2]
            await budgets.register(specs[0].tenant_id)
            rate, held = await scripts.run(budgets.url, [check, pending.call])
            verdict = ratelimits.verdict(rate, scopes, at)
            if not verdict.admitted:
                return verdict, budgets.hold_of(pending, held)
            return verdict, await budgets.complete(pending, held, now)
        verdict = await rates.acquire(request_id, scopes, tokens) if scopes else None
        if (verdict is not None and not verdict.admitted) or not specs:
            return verdict, None
        return verdict, await budgets.reserve(request_id, specs, amount, now)
    except Exception:
        if specs and not hold_keys and isinstance(budgets, holds.RedisBackend):
            hold_keys = budgets.pending(request_id, specs, amount, now).call.keys[:-2]  # what it may have held
        try:  # give back at once what the failed call may have taken; if Redis cannot be asked, the upkeep will
            await give_back(request_id, scopes, hold_keys)
        except Exception:
            compensate(request_id, scopes, hold_keys)
        raise


# Gate calls that failed after Redis may have done their work: (give up at, request id, scopes, hold keys).
_taken: list[tuple[float, str, list[Scope], list[str]]] = []


def compensate(request_id: str, scopes: list[Scope], hold_keys: list[str]) -> None:
    """Give back, from the upkeep loop, what a failed gate call may have taken; the lease is the backstop."""
    if scopes or hold_keys:
        _taken.append((time.monotonic() + settings.TOLLGATE_RESERVATION_LEASE_SECONDS, request_id, scopes, hold_keys))


async def give_back(request_id: str, scopes: list[Scope], hold_keys: list[str]) -> None:
    budgets = holds.backend()
    if hold_keys and isinstance(budgets, holds.RedisBackend):
        # Settling at zero is idempotent: a hold never made, or already released, adds nothing.
        await budgets.settle(holds.Hold(request_id, 0, [], True, hold_keys), 0)
    if scopes:
        await limiter().release(request_id, scopes)


async def give_back_taken() -> int:
    """Retry the give-backs of failed gate calls (called every second). Returns how many still wait."""
    waiting = list(_taken)
    _taken.clear()
    for give_up_at, request_id, scopes, hold_keys in waiting:
        try:
            await give_back(request_id, scopes, hold_keys)
        except Exception:
            if time.monotonic() < give_up_at:
                _taken.append((give_up_at, request_id, scopes, hold_keys))
    return len(_taken)
