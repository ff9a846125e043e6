"""What a client of each dialect must get back, checked the same way by the fault, race, fuzz and ledger tests.

/v1/messages* answers in Anthropic's shapes (https://docs.anthropic.com/en/api/errors, .../messages-streaming);
/v1/responses* in OpenAI's (the chat error envelope, and the Responses streaming events).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from asgiref.sync import sync_to_async

from billing.models import UsageRecord

from ..proxy.v1_client import AsgiReply, api_handler

MESSAGES, RESPONSES = "messages", "responses"
URLS = {MESSAGES: "/v1/messages", RESPONSES: "/v1/responses"}
COUNT_TOKENS = "/v1/messages/count_tokens"
# About 30 tokens by any tokenizer: more than any mock reports as the prompt, so a hold never falls short of it.
PROMPT = ("Count to three please, then name three rivers of Europe and three mountains of Asia, one per line, "
          "with nothing else at all.")

# Anthropic's error types (the anthropic SDK's ErrorType, plus request_too_large, which its docs list for 413).
ANTHROPIC_TYPES = {
    "invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error",
    "rate_limit_error", "timeout_error", "api_error", "overloaded_error", "request_too_large",
}
# The type Anthropic gives each status (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_TYPE_OF = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
    529: "overloaded_error",
}


def body_for(endpoint: str, model: str = "demo", *, stream: bool = False, tokens: int = 100, **fields: Any) -> dict[str, Any]:
    """A valid request of the dialect, asking at most ``tokens`` output tokens."""
    if endpoint == MESSAGES:
        body = {"model": model, "max_tokens": tokens, "messages": [{"role": "user", "content": PROMPT}]}
    else:
        body = {"model": model, "input": PROMPT, "max_output_tokens": tokens}
    if stream:
        body["stream"] = True
    return {**body, **fields}


def sse_events(content: bytes) -> list[tuple[str | None, Any]]:
    """The (event name, decoded data) of each SSE event in a body; data that is not JSON is kept as text."""
    events: list[tuple[str | None, Any]] = []
    for block in content.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = None, []
        for line in block.decode("utf-8", "replace").split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if name is None and not data:
            continue
        text = "\n".join(data)
        try:
            events.append((name, json.loads(text)))
        except ValueError:
            events.append((name, text))
    return events


def assert_anthropic_error(status: int, headers: Mapping[str, str], content: bytes,
                           expected: int | None = None) -> dict[str, Any]:
    """Anthropic's envelope: {"type": "error", "error": {"type", "message"}}, JSON, never a page or a trace."""
    if expected is not None:
        assert status == expected, (status, content[:500])
    assert 400 <= status < 600 and status != 500, (status, content[:500])
    assert headers["content-type"].startswith("application/json"), (headers, content[:200])
    envelope = json.loads(content)
    assert isinstance(envelope, dict) and envelope.get("type") == "error", envelope
    assert set(envelope) <= {"type", "error", "request_id"}, envelope
    error = envelope["error"]
    assert isinstance(error, dict) and set(error) >= {"type", "message"}, envelope
    assert error["type"] in ANTHROPIC_TYPES, envelope
    if status in ANTHROPIC_TYPE_OF:
        assert error["type"] == ANTHROPIC_TYPE_OF[status], (status, envelope)
    assert isinstance(error["message"], str) and error["message"] and "Traceback" not in error["message"]
    return error


def assert_openai_error(status: int, headers: Mapping[str, str], content: bytes,
                        expected: int | None = None) -> dict[str, Any]:
    """OpenAI's envelope: {"error": {"message", "type", "param", "code"}}."""
    if expected is not None:
        assert status == expected, (status, content[:500])
    assert 400 <= status < 600 and status != 500, (status, content[:500])
    assert headers["content-type"].startswith("application/json"), (headers, content[:200])
    envelope = json.loads(content)
    assert isinstance(envelope, dict) and list(envelope) == ["error"], envelope
    error = envelope["error"]
    assert set(error) == {"message", "type", "param", "code"}, envelope
    assert isinstance(error["message"], str) and error["message"] and "Traceback" not in error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    return error


def assert_error(endpoint: str, status: int, headers: Mapping[str, str], content: bytes,
                 expected: int | None = None) -> dict[str, Any]:
    check = assert_anthropic_error if endpoint == MESSAGES else assert_openai_error
    return check(status, headers, content, expected)


def assert_complete_stream(endpoint: str, content: bytes) -> list[tuple[str | None, Any]]:
    """A whole stream of the dialect: message_start ... message_stop, or response.created ... response.completed."""
    events = sse_events(content)
    assert events, content[:300]
    kinds = [data.get("type") if isinstance(data, dict) else None for _, data in events]
    assert all(name is None or name == kind for (name, _), kind in zip(events, kinds)), events[:5]
    if endpoint == MESSAGES:
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
        assert "error" not in kinds
    else:
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
        assert not {"error", "response.failed"} & set(kinds)
        numbers = [data.get("sequence_number") for _, data in events]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
        assert events[-1][1]["response"]["status"] == "completed"
    return events


def assert_failed_stream(endpoint: str, content: bytes) -> dict[str, Any]:
    """A stream cut short: it ends with the dialect's in-band error, never with its clean end. Returns the error."""
    events = sse_events(content)
    kinds = [data.get("type") if isinstance(data, dict) else None for _, data in events]
    assert events, content[:300]
    if endpoint == MESSAGES:
        assert "message_stop" not in kinds, kinds
        name, data = events[-1]
        assert name == "error" and data["type"] == "error", events[-3:]
        error = data["error"]
        assert error["type"] in ANTHROPIC_TYPES and isinstance(error["message"], str) and error["message"], data
        return dict(error)
    assert "response.completed" not in kinds, kinds
    failures = [data for _, data in events if isinstance(data, dict) and data.get("type") in ("error", "response.failed")]
    assert failures and events[-1][1] is failures[-1], kinds
    failure = failures[-1]
    if failure["type"] == "error":
        assert isinstance(failure["message"], str) and failure["message"] and "sequence_number" in failure, failure
        return dict(failure)
    response = failure["response"]
    assert response["status"] == "failed" and response["error"]["message"], failure
    return dict(response["error"])


async def exchange(path: str, body: bytes, headers: dict[str, str], *, leave_after_events: int | None = None,
                   leave_after_seconds: float | None = None) -> AsgiReply:
    """One request through the /v1 handler; the client may hang up after some events or some time."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    gone = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        events = sum(m.get("body", b"").count(b"\n\n") for m in sent if m["type"] == "http.response.body")
        if leave_after_events is not None and events >= leave_after_events:
            gone.set()

    if leave_after_seconds is not None:
        asyncio.get_running_loop().call_later(leave_after_seconds, gone.set)
    raw = [(k.lower().encode("latin1"), v.encode("latin1")) for k, v in
           {**headers, "content-type": "application/json", "content-length": str(len(body))}.items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": raw,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    await asyncio.wait_for(api_handler()(scope, receive, send), timeout=20)
    start = next((m for m in sent if m["type"] == "http.response.start"), {"status": 0, "headers": []})
    names = {k.decode("latin1").lower(): v.decode("latin1") for k, v in start["headers"]}
    bodies = [m.get("body", b"") for m in sent if m["type"] == "http.response.body"]
    # status 0: the client left first
    return AsgiReply(status=start["status"], headers=names, content=b"".join(bodies), writes=sum(1 for b in bodies if b))


async def rows_when_written(tenant_id: int, expected: int) -> list[UsageRecord]:
    """The tenant's rows once ``expected`` are written (a cancelled request writes its row just after it ended)."""
    count = sync_to_async(lambda: UsageRecord.objects.filter(tenant_id=tenant_id).count())
    for _ in range(500):
        if await count() >= expected:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # a second row, were one ever written, would show here
    return await sync_to_async(lambda: list(UsageRecord.objects.filter(tenant_id=tenant_id).order_by("id")))()
