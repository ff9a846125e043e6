"""Server-sent events as the OpenAI SDKs read them."""

from __future__ import annotations

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def frame(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def event(name: str, data: bytes) -> bytes:
    """A named event, as Anthropic's Messages and OpenAI's Responses streams send them."""
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
