"""A provider of the test's own that speaks the dialects natively (Anthropic Messages, OpenAI Responses), with faults.

The model name picks the behaviour: *-ok answers (12 input and 5 output tokens, whole or streamed), *-over-N answers
whole Messages counting N input tokens, *-fail answers 503
before the first byte, *-cut drops the connection after five deltas, *-oops sends the provider's own in-band error
event after five deltas, *-long streams for seconds.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

native_seen: list[str] = []  # what the upstream saw, in order: "request <model>", "disconnect <model>"


def native_events(path: str, model: str) -> list[tuple[str, dict[str, Any]]]:
    """The first events of an answer in the upstream's own dialect (then more deltas, as long as it runs)."""
    if path.endswith("/messages"):
        start = {"type": "message_start", "message": {"id": "msg_native", "type": "message", "role": "assistant",
                                                      "model": model, "content": [], "stop_reason": None,
                                                      "usage": {"input_tokens": 12, "output_tokens": 1}}}
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        return [("message_start", start), ("content_block_start", block)]
    response = {"id": "resp_native", "object": "response", "created_at": 1700000000, "status": "in_progress",
                "model": model, "output": []}
    return [("response.created", {"type": "response.created", "sequence_number": 0, "response": response})]


def native_delta(path: str, i: int) -> tuple[str, dict[str, Any]]:
    if path.endswith("/messages"):
        return "content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": f"word{i} "}}
    return "response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": i + 1,
                                          "item_id": "msg_1", "output_index": 0, "content_index": 0,
                                          "delta": f"word{i} "}


def native_whole(path: str, model: str) -> dict[str, Any]:
    """A whole answer, as the provider's non-streaming API returns it and its final stream event carries it."""
    if path.endswith("/messages"):
        # *-over-N counts the prompt as N tokens, as a provider whose tokenizer splits text finer than o200k may.
        prompt = int(model.rsplit("-", 1)[1]) if "-over-" in model else 12
        return {"id": "msg_native", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "Hello there."}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": 5}}
    return {"id": "resp_native", "object": "response", "created_at": 1700000000, "status": "completed", "model": model,
            "output": [{"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": "Hello there.", "annotations": []}]}],
            "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 17}}


def native_tail(path: str, model: str) -> list[tuple[str, dict[str, Any]]]:
    """The events that end a stream cleanly, with its usage."""
    if path.endswith("/messages"):
        return [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {"output_tokens": 5}}),
                ("message_stop", {"type": "message_stop"})]
    return [("response.completed", {"type": "response.completed", "sequence_number": 7,
                                    "response": native_whole(path, model)})]


async def native_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An Anthropic Messages and OpenAI Responses upstream: *-fail answers 503, *-cut drops the connection after
    five deltas, *-long streams for seconds (and notes when the caller hangs up)."""
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    path, model = scope["path"], str(json.loads(raw or b"{}").get("model"))
    native_seen.append(f"request {model}")
    if model.endswith("-fail"):
        body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    if (model.endswith("-ok") or "-over-" in model) and not json.loads(raw).get("stream"):
        body = json.dumps(native_whole(path, model)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    frames = native_events(path, model) + [native_delta(path, i) for i in range(400 if model.endswith("-long") else 5)]
    if model.endswith("-ok"):
        frames += native_tail(path, model)
    for i, (name, data) in enumerate(frames):
        await send({"type": "http.response.body", "body": f"event: {name}\ndata: {json.dumps(data)}\n\n".encode(),
                    "more_body": True})
        if model.endswith("-long"):
            try:
                async with asyncio.timeout(0.02):
                    if (await receive())["type"] == "http.disconnect":
                        native_seen.append(f"disconnect {model}")
                        return
            except TimeoutError:
                pass
    if model.endswith("-ok"):
        await send({"type": "http.response.body", "body": b""})
        return
    if model.endswith("-oops"):  # the provider's own in-band error, then the body ends cleanly
        error = ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                 if path.endswith("/messages") else
                 {"type": "error", "code": "server_error", "message": "boom", "param": None, "sequence_number": 9})
        await send({"type": "http.response.body", "body": f"event: error\ndata: {json.dumps(error)}\n\n".encode()})
        return
    raise ConnectionAbortedError("the native upstream drops the connection")
