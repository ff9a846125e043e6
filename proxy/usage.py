"""GET /v1/usage: the calling key's requests, tokens, exact cost and refusals, and the budgets that apply to it.

Money is never a float: each amount is a decimal string of dollars with every digit kept (``cost_usd``) next to
its integer in pico- or micro-dollars (``cost_picos``, ``held_micros``).
"""

from __future__ import annotations

import logging
import re
from datetime import date

from django.http import HttpRequest, HttpResponseBase, JsonResponse, QueryDict
from django.views.decorators.csrf import csrf_exempt

from accounts.keys import Caller
from billing import usage
from billing.models import micros_to_dollars, picos_to_dollars

from . import outages
from .auth import authenticate
from .db import db_step
from .errors import GatewayError, MethodNotAllowed, ServerError

logger = logging.getLogger(__name__)

ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
PERIODS = ("today", "month")


class GetOnly(MethodNotAllowed):
    def headers(self) -> dict[str, str]:
        return {"Allow": "GET"}


@csrf_exempt
async def key_usage(request: HttpRequest) -> HttpResponseBase:
    try:
        caller = await authenticate(request)
        if request.method != "GET":
            raise GetOnly("Use GET for /v1/usage.")
        period, days = requested_days(request.GET)
        found, states = await aread(caller, days)
    except GatewayError as e:
        return e.response()
    except Exception as e:
        error = outages.unavailable(e)
        if error is None:
            logger.exception("unexpected error on /v1/usage")
            error = ServerError("Tollgate failed to read the usage. It has been logged.")
        return error.response()
    return JsonResponse({"object": "usage", "key": {"id": caller.key_id, "prefix": caller.key_prefix,
                                                    "tenant": caller.tenant_slug},
                         "period": period, **usage_json(found), "budgets": [budget_json(s) for s in states]})


def requested_days(query: QueryDict) -> tuple[str, usage.DateRange]:
    """("today" | "month" | "range", the UTC days asked for). Raises a 400 GatewayError naming the parameter."""
    period, start, end = query.get("period"), query.get("start"), query.get("end")
    if period is not None and (start is not None or end is not None):
        raise GatewayError("Give either period or start and end, not both.", param="period")
    if period is not None and period not in PERIODS:
        raise GatewayError("period must be 'today' or 'month' (UTC); for other days give start and end.", param="period")
    if period == "month":
        return period, usage.month_so_far()
    if start is None and end is None:
        return "today", usage.date_range(None, None, max_days=1)
    if start is None:
        raise GatewayError("Give start with end (YYYY-MM-DD, UTC); end defaults to today.", param="start")
    try:
        return "range", usage.date_range(day(start, "start"), day(end, "end") if end is not None else None,
                                         max_days=usage.KEY_MAX_DAYS)
    except usage.BadQuery as e:
        raise GatewayError(e.message, param=e.param) from None


def day(value: str, param: str) -> date:
    try:
        if ISO_DAY.fullmatch(value):
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise GatewayError(f"{param} must be a date as YYYY-MM-DD (a UTC day).", param=param)


def read(caller: Caller, days: usage.DateRange) -> tuple[usage.KeyUsage, list[usage.BudgetState]]:
    return (usage.key_usage(tenant_id=caller.tenant_id, key_id=caller.key_id, days=days),
            usage.key_budgets(tenant_id=caller.tenant_id, key_id=caller.key_id, project_id=caller.project_id))


aread = db_step(read)


def totals_json(totals: usage.Totals) -> dict[str, object]:
    return {"requests": totals.requests, "refusals": totals.refusals, "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens, "total_tokens": totals.total_tokens,
            "cost_usd": str(picos_to_dollars(totals.cost_picos)), "cost_picos": totals.cost_picos}


def usage_json(found: usage.KeyUsage) -> dict[str, object]:
    before = found.from_rollups_before
    return {"start": found.days.first.isoformat(), "end": found.days.last.isoformat(), **totals_json(found.totals),
            "daily": [{"date": d.isoformat(), **totals_json(t)} for d, t in found.daily],
            "rolled_up_before": before.isoformat() if before else None}


def budget_json(state: usage.BudgetState) -> dict[str, object]:
    budget = state.budget
    return {"id": budget.pk, "name": str(budget), "scope": state.scope, "applies_to": budget.scope_label,
            "period": budget.period, "hard": budget.hard,
            "period_start": state.starts_at.isoformat(),
            "period_end": state.ends_at.isoformat() if state.ends_at else None,
            "limit_usd": str(micros_to_dollars(state.limit_micros)), "limit_micros": state.limit_micros,
            "spent_usd": str(picos_to_dollars(state.spent_picos)), "spent_picos": state.spent_picos,
            "held_usd": str(micros_to_dollars(state.held_micros)), "held_micros": state.held_micros,
            "left_usd": str(micros_to_dollars(state.left_micros)), "left_micros": state.left_micros}
