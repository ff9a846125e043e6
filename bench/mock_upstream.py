"""A fast local stand-in for an LLM provider, for the test suite and the benchmark. Never the network.

It speaks OpenAI's chat/completions/embeddings API and Anthropic's messages API. The upstream model
name picks the behaviour:

    mock            answers at once; streams CHUNKS chunks and usage when asked
    mock-slow       streams with DELAY seconds between chunks (time-to-first-byte and pacing checks)
    mock-long       streams 400 chunks 20 ms apart (disconnect checks)
    mock-nousage    never reports usage
    mock-400/401/404/429/500/503   fails with that status and a body that must not reach clients
    mock-cut        sends a few chunks, then drops the connection
    mock-hang       waits HANG seconds before answering
    mock-toolong    refuses the prompt as too long for the model's context window (each API's own error shape)
    mock-flaky?status=429&times=2&retry_after_ms=20&tag=t1
                    fails with that status (and a retry-after-ms or retry_after header, if given) the first
                    `times` requests naming this exact model, then answers as `mock` does

Every connection that ends before its response is complete is logged with its time; GET /_events
returns that log (and DELETE /_events clears it).

Run alone: python bench/mock_upstream.py --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs

CHUNKS = 20
DELAY = 0.05
HANG = 5.0
SECRET_BODY_MARKER = "UPSTREAM-SECRET-sk-mock-should-never-leak"

events: list[dict[str, Any]] = []
peers: list[tuple[object, ...]] = []  # the client (host, port) of each request, in order of arrival
flaky: dict[str, int] = {}  # requests seen so far for each mock-flaky model name (a test picks a fresh tag)


def chat_chunk(i: int, content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    if i == 0:
        delta["role"] = "assistant"
    return json.dumps({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000, "model": "mock",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }, separators=(",", ":")).encode()


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


USAGE_CHUNK = json.dumps({
    "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000, "model": "mock", "choices": [],
    "usage": usage(10, CHUNKS),
}, separators=(",", ":")).encode()

CHAT_RESPONSE = json.dumps({
    "id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000, "model": "mock",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock."}, "finish_reason": "stop"}],
    "usage": usage(10, 5),
}).encode()

COMPLETION_RESPONSE = json.dumps({
    "id": "cmpl-mock", "object": "text_completion", "created": 1700000000, "model": "mock",
    "choices": [{"index": 0, "text": "Hello from the mock.", "finish_reason": "stop", "logprobs": None}],
    "usage": usage(4, 5),
}).encode()


async def send_json(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Any) -> dict[str, Any]:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return json.loads(b"".join(chunks) or b"{}")


def count_request(scope: dict[str, Any]) -> None:
    # The client's (host, port) names its connection: a reused connection keeps its port. (A port can come back
    # for a later connection after many, so a test compares the peers of its own requests only.)
    peers.append(tuple(scope.get("client") or ()))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path, method = scope["path"], scope["method"]
    if path == "/_events":
        if method == "DELETE":
            events.clear()
        await send_json(send, 200, json.dumps(events).encode())
        return
    count_request(scope)
    body = await read_body(receive)
    model = str(body.get("model", "mock"))
    if model.startswith("mock-") and model[5:].isdigit():
        error = {"error": {"message": f"{SECRET_BODY_MARKER} failure", "type": "mock_error", "code": "mock_failure"}}
        await send_json(send, int(model[5:]), json.dumps(error).encode())
        return
    if model == "mock-hang":
        await asyncio.sleep(HANG)
    if model == "mock-toolong":
        await send_json(send, 400, too_long(path))
        return
    if model.startswith("mock-flaky?"):
        if await flaky_failure(model, send):
            return
        body["model"] = model = "mock"
    if path.endswith("/messages"):
        await anthropic(body, send)
    elif path.endswith("/embeddings"):
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) else 1
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(count)]
        await send_json(send, 200, json.dumps({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 3 * count, "total_tokens": 3 * count}}).encode())
    elif body.get("stream"):
        await stream_chat(body, model, scope, receive, send)
    elif path.endswith("/completions") and not path.endswith("/chat/completions"):
        await send_json(send, 200, COMPLETION_RESPONSE)
    else:
        response = CHAT_RESPONSE
        if model == "mock-nousage":
            data = json.loads(CHAT_RESPONSE)
            del data["usage"]
            response = json.dumps(data).encode()
        await send_json(send, 200, response)


def too_long(path: str) -> bytes:
    if path.endswith("/messages"):  # https://docs.anthropic.com/en/api/errors
        error = {"type": "error", "error": {"type": "invalid_request_error",
                                            "message": "prompt is too long: 210000 tokens > 200000 maximum"}}
    else:
        error = {"error": {"message": "This model's maximum context length is 128000 tokens.",
                           "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
    return json.dumps(error).encode()


async def flaky_failure(model: str, send: Any) -> bool:
    """Fail the request if this flaky model has failed fewer than its `times` so far; True if it did."""
    options = {name: values[-1] for name, values in parse_qs(model.partition("?")[2]).items()}
    seen = flaky[model] = flaky.get(model, 0) + 1
    if seen > int(options.get("times", "1")):
        return False
    headers = [(b"content-type", b"application/json")]
    for option, header in (("retry_after_ms", b"retry-after-ms"), ("retry_after", b"retry-after")):
        if option in options:
            headers.append((header, options[option].encode()))
    body = json.dumps({"error": {"message": f"{SECRET_BODY_MARKER} busy", "type": "mock_error", "code": None}}).encode()
    await send({"type": "http.response.start", "status": int(options.get("status", "429")), "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return True


async def watch_disconnect(receive: Any, scope: dict[str, Any], model: str) -> None:
    # The body was read already, so the next message is http.disconnect: the moment the caller hung up.
    while (await receive())["type"] != "http.disconnect":
        pass
    events.append({"event": "disconnect", "path": scope["path"], "model": model, "at": time.monotonic()})


async def stream_chat(body: dict[str, Any], model: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
    count, delay = {"mock-long": (400, 0.02), "mock-slow": (CHUNKS, DELAY)}.get(model, (CHUNKS, 0.0))
    include_usage = (body.get("stream_options") or {}).get("include_usage") and model != "mock-nousage"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    watcher = asyncio.ensure_future(watch_disconnect(receive, scope, model)) if delay else None
    try:
        for i in range(count):
            if delay:
                await asyncio.sleep(delay)
                if watcher is not None and watcher.done():
                    return
            await send({"type": "http.response.body", "body": b"data: " + chat_chunk(i, f"tok{i} ") + b"\n\n", "more_body": True})
            if model == "mock-cut" and i == 2:
                raise ConnectionAbortedError("mock upstream drops the connection")
        tail = b"data: " + chat_chunk(count, None, "stop") + b"\n\n"
        if include_usage:
            tail += b"data: " + USAGE_CHUNK + b"\n\n"
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})
    finally:
        if watcher is not None:
            watcher.cancel()


async def anthropic(body: dict[str, Any], send: Any) -> None:
    if not body.get("stream"):
        message = {"id": "msg_mock", "type": "message", "role": "assistant", "model": body.get("model"),
                   "content": [{"type": "text", "text": "Hello from the mock."}], "stop_reason": "end_turn",
                   "usage": {"input_tokens": 12, "output_tokens": 5}}
        await send_json(send, 200, json.dumps(message).encode())
        return
    frames = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant",
                                                                 "model": body.get("model"), "content": [],
                                                                 "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        *[("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})
          for t in ("Hello", " from", " the", " mock.")],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    payload = b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in frames)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
