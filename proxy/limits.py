"""Step two: the gate between a known caller and the provider: rate limits, then budgets.

Admitting a request takes a rate limit slot and holds its worst-case cost on every budget that applies;
the meter gives both back when the request ends, whichever way it ends (see Meter.record).
"""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from billing import holds, pricing, scripts, tokens
from billing.budgets import Table, load_table
from billing.models import Price, micros_to_dollars

from . import ratelimits
from .db import db_step
from .errors import BudgetExceeded, RateLimited
from .metering import Meter
from .providers.base import CHAT, EMBEDDINGS, ApiRequest, Target
from .ratelimits import RedisLimiter, Scope, Verdict, limiter

_budgets: Table | None = None


async def budget_table() -> Table:
    global _budgets
    if _budgets is None or time.monotonic() - _budgets.loaded_at > settings.TOLLGATE_ROUTES_CACHE_SECONDS:
        _budgets = await db_step(load_table)()
    return _budgets


def forget_budgets() -> None:
    global _budgets
    _budgets = None


def dollars(micros: int) -> str:
    return f"${micros_to_dollars(max(micros, 0)).quantize(Decimal('0.01'))}"


def worst_case(body: ApiRequest, target: Target) -> tuple[int, int]:
    """Return (prompt tokens by the tokenizer, the completion tokens the request may use at most)."""
    model = target.upstream_model
    texts = body.prompt_texts()
    prompt = tokens.count_messages(texts, model=model) if body.endpoint == CHAT else tokens.count(texts, model=model)
    completion = 0 if body.endpoint == EMBEDDINGS else (body.max_tokens or settings.TOLLGATE_DEFAULT_COMPLETION_TOKENS)
    return prompt, completion


async def check_limits(meter: Meter, targets: list[Target]) -> None:
    """Admit the request or raise BudgetExceeded / RateLimited. Admitted requests leave a slot and a hold on the meter."""
    caller, body = meter.caller, meter.body
    assert caller is not None and body is not None
    specs = (await budget_table()).applicable(caller.tenant_id, caller.key_id)
    scopes = [s for s in (Scope("key", caller.key_prefix, caller.key_limits),
                          Scope("tenant", caller.tenant_slug, caller.tenant_limits)) if s.limits]
    if not specs and not scopes:
        return
    now = timezone.now()
    # The tokenizer runs only when a budget or a token limit needs the count.
    counted = bool(specs) or any(s.limits.tokens_per_minute is not None for s in scopes)
    prompt, completion = worst_case(body, targets[0]) if counted else (0, 0)
    amount = 0
    if specs:
        price = (await pricing.table()).find(public_model=targets[0].public_model, provider=targets[0].provider_name,
                                             upstream_model=targets[0].upstream_model, on=now.date())
        amount = hold_amount(meter, specs, price, prompt, completion)
    asking = asyncio.ensure_future(take(meter.request_id, scopes, prompt + completion, specs, amount, now))
    try:
        verdict, hold = await asyncio.shield(asking)
    except asyncio.CancelledError:
        # The client left while the answer was on its way: whatever it grants goes straight back.
        asking.add_done_callback(functools.partial(give_back, meter.request_id, scopes))
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
            left = check.spec.limit_micros - check.spent_micros - check.reserved_micros
            raise BudgetExceeded(
                f"You exceeded the {check.spec.period} budget of this {check.spec.scope} "
                f"({dollars(check.spec.limit_micros)}): {dollars(left)} remains and this request may cost up to "
                f"{dollars(amount)}.")
        meter.hold = hold


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


def hold_amount(meter: Meter, specs: tuple, price: Price | None, prompt: int, completion: int) -> int:
    """What to hold on the budgets: the worst case at the price, capped. Raises BudgetExceeded for unpriced models
    when so configured."""
    if price is None:
        meter.gate["unpriced"] = True
        if settings.TOLLGATE_UNPRICED == "deny" and any(s.hard for s in specs):
            raise BudgetExceeded("This model has no price yet, and this key's budgets only admit priced models. "
                                 "Ask your Tollgate operator to add a price.")
        return 0
    return min(price.cost_micros(prompt_tokens=prompt, completion_tokens=completion),
               settings.TOLLGATE_RESERVATION_CAP_MICROS)


async def take(request_id: str, scopes: list[Scope], tokens: int, specs: tuple, amount: int,
               now: datetime) -> tuple[Verdict | None, holds.Hold | None]:
    """Ask the rate limits, then the budgets. With Redis both go in one round trip; a rate limit refusal
    then comes back with a hold that the caller gives back."""
    rates, budgets = limiter(), holds.backend()
    if scopes and specs and isinstance(rates, RedisLimiter) and isinstance(budgets, holds.RedisBackend):
        check, at = rates.check(request_id, scopes, tokens)
        pending = budgets.pending(request_id, specs, amount, now)
        rate, held = await scripts.run(budgets.url, [check, pending.call])
        verdict = ratelimits.verdict(rate, scopes, at)
        if not verdict.admitted:
            return verdict, budgets.hold_of(pending, held)
        holding = budgets.complete(pending, held, now)
    else:
        verdict = await rates.acquire(request_id, scopes, tokens) if scopes else None
        if (verdict is not None and not verdict.admitted) or not specs:
            return verdict, None
        holding = budgets.reserve(request_id, specs, amount, now)
    try:
        return verdict, await holding
    except Exception:
        if verdict is not None:  # the budgets could not be asked: the slot just taken goes back
            await rates.release(request_id, scopes)
        raise
