"""A small recording upstream for the Responses tests: OpenAI's chat completions with tool calls, and OpenAI's own
/v1/responses (whole and streamed), each request body kept for the test to read. Run with tests.live.serve_app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

Json = dict[str, Any]
UPSTREAM_MODEL = "gpt-upstream-2026-01-01"
SLOW_MODEL = "gpt-slow"  # streams 200 deltas 20 ms apart
FAILING_MODEL = "gpt-fails"  # streams a response that fails after it began
USAGE = {"input_tokens": 21, "input_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 0}, "output_tokens": 7,
         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 28}


class Upstream:
    def __init__(self) -> None:
        self.requests: list[tuple[str, Json]] = []

    async def __call__(self, scope: Json, receive: Any, send: Any) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw)
        self.requests.append((scope["path"], body))
        if scope["path"].endswith("/responses"):
            events = response_events(body)
            if body.get("stream") and body["model"] == SLOW_MODEL:  # paced, for clients that leave half-way
                await paced(send, [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events])
            elif body.get("stream"):
                await sse(send, b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events))
            else:
                await reply(send, events[-1]["response"])
        elif body.get("stream"):
            chunks = [{"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 1, "model": UPSTREAM_MODEL,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                      for delta, finish in chat_deltas(body)]
            chunks.append({"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 1, "model": UPSTREAM_MODEL,
                           "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}})
            await sse(send, b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n")
        else:
            message, finish = chat_message(body)
            await reply(send, {"id": "chatcmpl-u", "object": "chat.completion", "created": 1, "model": UPSTREAM_MODEL,
                               "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                               "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}})


def chat_message(body: Json) -> tuple[Json, str]:
    """A tool call while the tools have not answered yet; then an answer quoting the tool's output."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return {"role": "assistant", "content": f"The tool said: {last['content']}"}, "stop"
    if body.get("tools"):
        call = {"id": "call_up1", "type": "function",
                "function": {"name": body["tools"][0]["function"]["name"], "arguments": '{"city":"Oslo"}'}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    return {"role": "assistant", "content": "Plain answer."}, "stop"


def chat_deltas(body: Json) -> list[tuple[Json, str | None]]:
    message, finish = chat_message(body)
    if message.get("tool_calls"):
        call = message["tool_calls"][0]
        return [({"role": "assistant", "tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                       "function": {"name": call["function"]["name"], "arguments": ""}}]},
                 None),
                ({"tool_calls": [{"index": 0, "function": {"arguments": call["function"]["arguments"]}}]}, None),
                ({}, finish)]
    return [({"role": "assistant", "content": message["content"]}, None), ({}, finish)]


def response_events(body: Json) -> list[Json]:
    """The events OpenAI streams for a one-message answer (and the Response it ends with)."""
    base = {"id": "resp_upstream1", "object": "response", "created_at": 1, "model": UPSTREAM_MODEL, "status": "in_progress",
            "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "store": False, "usage": None,
            "previous_response_id": None}
    item = {"id": "msg_up1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "Native answer.", "annotations": []}]}
    where = {"item_id": "msg_up1", "output_index": 0, "content_index": 0}
    events = [
        {"type": "response.created", "response": base},
        {"type": "response.in_progress", "response": base},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **where, "part": {"type": "output_text", "text": "", "annotations": []}},
        *[{"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
          for piece in (["Native ", "answer."] if body["model"] != SLOW_MODEL else ["word "] * 200)],
        {"type": "response.output_text.done", **where, "text": "Native answer.", "logprobs": []},
        {"type": "response.content_part.done", **where, "part": item["content"][0]},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": {**base, "status": "completed", "output": [item], "usage": USAGE}},
    ]
    if body["model"] == FAILING_MODEL:
        error = {"code": "server_error", "message": "The model failed."}
        events = [*events[:2], {"type": "response.failed",
                                "response": {**base, "status": "failed", "error": error, "usage": USAGE}}]
    return [{**event, "sequence_number": i} for i, event in enumerate(events)]


async def reply(send: Any, data: Json) -> None:
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def paced(send: Any, frames: list[bytes]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for frame in frames:
        await send({"type": "http.response.body", "body": frame, "more_body": True})
        await asyncio.sleep(0.02)
    await send({"type": "http.response.body", "body": b""})


async def sse(send: Any, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": payload})
