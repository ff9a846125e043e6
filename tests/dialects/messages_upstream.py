"""A small upstream for the /v1/messages tests: Anthropic's Messages API (with prompt-cache usage) and an
OpenAI-compatible chat endpoint that calls a tool when offered one. It keeps every request it gets, so a test can
check what Tollgate sent."""

from __future__ import annotations

import json
from typing import Any

received: list[dict[str, Any]] = []  # {"path", "headers", "body"} of each request, in order

ANTHROPIC_USAGE = {"input_tokens": 11, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 3000,
                   "output_tokens": 1}
CHAT_USAGE = {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52, "prompt_tokens_details": {"cached_tokens": 8}}


async def read(receive: Any) -> dict[str, Any]:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return json.loads(b"".join(chunks) or b"{}")


async def answer(send: Any, status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})


async def events(send: Any, frames: list[tuple[str | None, dict[str, Any]]]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    data = b"".join((f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(payload).encode() + b"\n\n"
                    for name, payload in frames)
    await send({"type": "http.response.body", "body": data + (b"" if frames[0][0] else b"data: [DONE]\n\n")})


def message(model: str) -> dict[str, Any]:
    return {"id": "msg_upstream", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Cached hello."}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {**ANTHROPIC_USAGE, "output_tokens": 6}}


def anthropic_frames(model: str) -> list[tuple[str | None, dict[str, Any]]]:
    start = {**message(model), "content": [], "stop_reason": None, "usage": ANTHROPIC_USAGE}
    frames: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Cached"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " hello."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 6}},
        {"type": "message_stop"},
    ]
    return [(frame["type"], frame) for frame in frames]


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "up-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def chat_frames(tools: bool) -> list[tuple[str | None, dict[str, Any]]]:
    if tools:
        call = {"index": 0, "id": "call_up", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        chunks = [chat_chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
                  chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
                  chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
                  chat_chunk({}, "tool_calls")]
    else:
        chunks = [chat_chunk({"role": "assistant", "content": "Hi"}), chat_chunk({"content": " there."}),
                  chat_chunk({}, "stop")]
    usage = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "up-model", "choices": [],
             "usage": CHAT_USAGE}
    return [(None, chunk) for chunk in [*chunks, usage]]


def chat_answer(tools: bool) -> dict[str, Any]:
    if tools:
        call = {"id": "call_up", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        choice = {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                  "finish_reason": "tool_calls"}
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": "Hi there."}, "finish_reason": "stop"}
    return {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "up-model", "choices": [choice],
            "usage": CHAT_USAGE}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = await read(receive)
    headers = {k.decode("latin1"): v.decode("latin1") for k, v in scope["headers"]}
    received.append({"path": scope["path"], "headers": headers, "body": body})
    model = str(body.get("model", ""))
    if model.endswith("-529"):
        await answer(send, 529, {"type": "error", "error": {"type": "overloaded_error", "message": "secret prompt"}})
    elif scope["path"].endswith("/messages"):
        if body.get("stream"):
            await events(send, anthropic_frames(model))
        else:
            await answer(send, 200, message(model))
    elif body.get("stream"):
        await events(send, chat_frames(bool(body.get("tools"))))
    else:
        await answer(send, 200, chat_answer(bool(body.get("tools"))))
