"""Every exit path of /v1/messages and /v1/responses, stream and not, leaves exactly one ledger row, as /v1 chat does:
the dialect's endpoint, the end reason and the status the client got, and the client's answer in the dialect's shape.

In process, through the lean ASGI handler that serves /v1 in production; the built-in demo model answers, and the
mock upstream (in a thread) fails or hangs on demand. An unauthenticated request belongs to no tenant and leaves no
row, on these paths as on chat.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from accounts.models import ApiKey, Tenant
from billing.models import Budget, Price, UsageRecord
from proxy import routing
from proxy.models import Provider
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..factories import make_route
from ..live import serve_app
from ..proxy.v1_client import AsgiReply
from .dialect_checks import (
    MESSAGES, RESPONSES, URLS, assert_complete_stream, assert_error, body_for, exchange, rows_when_written,
)
from .native_upstream import native_upstream

CASES = ["success", "validation", "unauthenticated", "forbidden", "unknown_model", "never_fits", "budget_spent",
         "rate_limit", "upstream_500", "upstream_timeout", "disconnect", "left_early"]
# What the row says (end reason, status, error code; None: not checked) and what the client got, per exit path.
EXPECTED: dict[str, tuple[str, int, str | None]] = {
    "success": ("complete", 200, ""),
    "validation": ("rejected", 400, None),
    "forbidden": ("rejected", 403, None),
    "unknown_model": ("rejected", 404, "model_not_found"),
    "never_fits": ("rejected", 429, "insufficient_quota"),
    "budget_spent": ("rejected", 429, "insufficient_quota"),
    "rate_limit": ("rejected", 429, "rate_limit_exceeded"),
    "upstream_500": ("upstream_error", 502, None),
    "upstream_timeout": ("timeout", 504, None),
    "disconnect": ("client_gone", 499, ""),
    "left_early": ("client_gone", 499, ""),
}


@pytest.fixture
def routed(alice: Party, mock_upstream_url: str) -> Party:
    if os.environ.get("REDIS_URL"):
        import redis

        redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()  # rate windows are keyed by key prefix, reused
    ensure_demo_route()
    for model in ("mock-500", "mock-hang"):
        make_route(model, upstream_model=model, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    routing.invalidate()
    for model in ("demo", "mock-500", "mock-hang"):
        Price.objects.create(model=model, input_per_million=Decimal("1"), output_per_million=Decimal("2"))
    return alice


def invalid_body(endpoint: str, stream: bool) -> dict[str, Any]:
    """Valid but for one field the dialect requires: Messages' max_tokens, Responses' input as text or items."""
    body = body_for(endpoint, stream=stream)
    if endpoint == MESSAGES:
        del body["max_tokens"]
    else:
        body["input"] = 5
    return body


def arrange(case: str, party: Party, endpoint: str, stream: bool, settings: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Set the scene for one exit path; returns the body to send and how the client behaves."""
    body, client = body_for(endpoint, stream=stream), {}
    if case == "validation":
        body = invalid_body(endpoint, stream)
    elif case == "forbidden":
        Tenant.objects.filter(pk=party.tenant.pk).update(allowed_models=["something-else"])
    elif case == "unknown_model":
        body["model"] = "no-such-model"
    elif case == "never_fits":  # the worst case is more than the whole budget
        Budget.objects.create(tenant=party.tenant, amount=Decimal("0.000001"), period="month")
    elif case == "budget_spent":  # room for the first request's worst case, not for a second one
        Budget.objects.create(tenant=party.tenant, amount=Decimal("0.000300"), period="month")
    elif case == "upstream_500":
        body["model"] = "mock-500"
    elif case == "upstream_timeout":  # the provider sends nothing for longer than the read timeout, every attempt
        settings.TOLLGATE_UPSTREAM_READ_TIMEOUT = 1
        settings.TOLLGATE_RETRY_BACKOFF_MS = 10
        body["model"] = "mock-hang"
    elif case == "left_early":  # the client leaves while the provider has not answered (a stream: no headers yet)
        body["model"] = "mock-hang"
        client = {"leave_after_seconds": 0.3}
    elif case == "disconnect":
        if stream:
            settings.TOLLGATE_DEMO_TOKEN_DELAY_MS = 20
            body["max_output_tokens" if endpoint == RESPONSES else "max_tokens"] = 200
            client = {"leave_after_events": 3}
        else:
            body["model"] = "mock-hang"  # the client leaves while the provider is still thinking
            client = {"leave_after_seconds": 0.3}
    return body, client


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("endpoint", [MESSAGES, RESPONSES])
@pytest.mark.parametrize("case", CASES)
def test_each_exit_path_leaves_exactly_one_row(routed: Party, settings: Any, case: str, endpoint: str,
                                               stream: bool) -> None:
    body, client = arrange(case, routed, endpoint, stream, settings)
    headers = dict(routed.auth)
    if case == "unauthenticated":
        headers = {"Authorization": "Bearer tg-nobody-0000000000000000000000000000"}
    earlier = 0
    if case in ("rate_limit", "budget_spent"):
        if case == "rate_limit":
            ApiKey.objects.filter(pk=routed.key.pk).update(requests_per_minute=1)
        first = async_to_sync(exchange)(URLS[endpoint], json.dumps(body).encode(), headers)
        assert first.status == 200, first.content
        earlier = 1

    async def run() -> tuple[AsgiReply, list[UsageRecord]]:
        reply = await exchange(URLS[endpoint], json.dumps(body).encode(), headers, **client)
        expected_rows = earlier + (0 if case == "unauthenticated" else 1)
        return reply, await rows_when_written(routed.tenant.pk, expected_rows)

    reply, rows = async_to_sync(run)()
    if case == "unauthenticated":
        assert_error(endpoint, reply.status, reply.headers, reply.content, 401)
        assert rows == []
        return
    assert len(rows) == earlier + 1, [(r.end_reason, r.status_code) for r in rows]
    row = rows[-1]
    end_reason, status, code = EXPECTED[case]
    assert (row.endpoint, row.end_reason, row.status_code) == (endpoint, end_reason, status)
    if code is not None:
        assert row.error_code == code
    if reply.status:
        assert row.request_id.hex == reply.headers["x-request-id"]
    if case != "validation":
        assert row.stream is stream
    if case == "success":
        assert reply.status == 200
        if stream:
            assert reply.headers["content-type"].startswith("text/event-stream")
            assert_complete_stream(endpoint, reply.content)
        else:
            answer = reply.json()
            assert answer["type" if endpoint == MESSAGES else "object"] == ("message" if endpoint == MESSAGES else "response")
        assert row.completion_tokens > 0 and row.cost_picos > 0
    elif case == "left_early":  # the client leaves while the provider has not answered (a stream: no headers yet)
        body["model"] = "mock-hang"
        client = {"leave_after_seconds": 0.3}
    elif case == "left_early":
        assert reply.status == 0 and row.cost_picos == 0  # nothing was sent either way: nothing to bill
    elif case == "disconnect":
        if stream:
            assert reply.status == 200 and row.completion_tokens > 0  # what was relayed is billed
        else:
            assert reply.status == 0 and row.cost_picos == 0  # nothing came back: nothing to bill
    else:
        error = assert_error(endpoint, reply.status, reply.headers, reply.content, status)
        if case in ("never_fits", "budget_spent", "rate_limit") and endpoint == RESPONSES:
            assert error["code"] == code
        if case in ("never_fits", "budget_spent"):
            assert reply.headers["x-should-retry"] == "false"
        if case == "budget_spent":
            assert "denied_by" in row.gate  # the alert job finds a hard budget's first refusal by it
        if case == "rate_limit":
            assert int(reply.headers["retry-after"]) >= 1
        assert row.cost_picos == 0  # nothing came back: nothing to bill


def test_a_follow_up_is_held_and_billed_for_the_whole_conversation(routed: Party) -> None:
    # previous_response_id sends every earlier turn to the provider again: the gate must hold for them too.
    Budget.objects.create(tenant=routed.tenant, amount=Decimal("100"), period="month")
    long_input = " ".join(f"word{i}" for i in range(3000))
    first = async_to_sync(exchange)(URLS[RESPONSES], json.dumps({"model": "demo", "input": long_input}).encode(), routed.auth)
    assert first.status == 200, first.content
    follow_up = {"model": "demo", "input": "And now?", "previous_response_id": first.json()["id"], "max_output_tokens": 100}
    second = async_to_sync(exchange)(URLS[RESPONSES], json.dumps(follow_up).encode(), routed.auth)
    assert second.status == 200, second.content
    row = UsageRecord.objects.get(request_id=second.headers["x-request-id"])
    held_prompt = row.gate["worst_case_tokens"][0]
    assert row.prompt_tokens >= 3000 and held_prompt >= row.prompt_tokens, (row.prompt_tokens, held_prompt)
    assert row.cost_picos <= row.gate["held_micros"] * 10**6


# What bench/mock_upstream.py reports: chat answers 10 prompt tokens and 5 completion tokens (20 when streamed);
# Anthropic messages 12 input tokens and 5 output tokens (4 when streamed).
# The native Responses test provider answers 12 and 5.
MOCK_USAGE = {("mock", False): (10, 5), ("mock", True): (10, 20), ("claude-mock", False): (12, 5), ("claude-mock", True): (12, 4),
              ("gpt-ok", False): (12, 5), ("gpt-ok", True): (12, 5)}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("endpoint", "model"), [(MESSAGES, "mock"), (MESSAGES, "claude-mock"), (RESPONSES, "mock"),
                                                 (RESPONSES, "claude-mock"), (RESPONSES, "gpt-ok")])
def test_the_row_bills_exactly_the_usage_the_provider_reported(routed: Party, mock_upstream_url: str, endpoint: str,
                                                               model: str, stream: bool) -> None:
    make_route("mock", upstream_model="mock", base_url=f"{mock_upstream_url}/v1", provider_name="mock")
    make_route("claude-mock", upstream_model="claude-mock", base_url=mock_upstream_url, kind="anthropic",
               provider_name="mock-anthropic")
    with serve_app(native_upstream) as native_url:
        Provider.objects.create(name="native-openai", kind="openai_compatible", preset="openai", base_url=f"{native_url}/v1")
        make_route("gpt-ok", upstream_model="gpt-ok", provider_name="native-openai")
        routing.invalidate()
        Price.objects.create(model=model, input_per_million=Decimal("0.15"), output_per_million=Decimal("0.60"))
        reply = async_to_sync(exchange)(URLS[endpoint], json.dumps(body_for(endpoint, model, stream=stream)).encode(),
                                        routed.auth)
    assert_exact_usage(endpoint, model, stream, reply)


def assert_exact_usage(endpoint: str, model: str, stream: bool, reply: AsgiReply) -> None:
    assert reply.status == 200, reply.content
    if stream:
        assert_complete_stream(endpoint, reply.content)
    row = UsageRecord.objects.get(request_id=reply.headers["x-request-id"])
    prompt, completion = MOCK_USAGE[(model, stream)]
    assert (row.usage_source, row.prompt_tokens, row.completion_tokens) == ("provider", prompt, completion)
    assert row.cost_picos == prompt * 150_000 + completion * 600_000  # $0.15 and $0.60 per million, in picos
