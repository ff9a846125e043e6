"""The built-in demo model: a deterministic answer streamed token by token, with no network and no key.

It paces tokens like a real model (TOLLGATE_DEMO_TOKEN_DELAY_MS) and reports usage counted by its own
simple tokenizer, so the whole path (metering, ledger, limits) can be tried before any provider is set up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator

from django.conf import settings

from .base import CHAT, COMPLETIONS, EMBEDDINGS, ApiRequest, Chunk, Completion, JSONDict, Target, Usage

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])")
EMBEDDING_DIMENSIONS = 16


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def reply_for(body: ApiRequest) -> str:
    prompt = " ".join(body.prompt_texts()).strip()
    echo = " ".join(prompt.split()[:12]) or "nothing"
    if max(len(prompt.split()), 1) > 12:
        echo += " …"
    return (
        f"Hello from Tollgate's demo model! You said: “{echo}”. Every token of this answer is streamed through "
        "the gateway, metered and written to the usage ledger, just like a real provider's."
    )


def usage_for(body: ApiRequest, text: str) -> Usage:
    prompt_tokens = sum(len(tokens(t)) for t in body.prompt_texts())
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=len(tokens(text)))


def usage_json(usage: Usage) -> JSONDict:
    total = usage.prompt_tokens + usage.completion_tokens
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": total}


def embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:EMBEDDING_DIMENSIONS]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def _dumps(data: JSONDict) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class DemoStream:
    def __init__(self, target: Target, body: ApiRequest) -> None:
        self.target, self.body = target, body
        self.text = reply_for(body)
        self.id = f"{'chatcmpl' if body.endpoint == CHAT else 'cmpl'}-demo{uuid.uuid4().hex[:20]}"
        self.created = int(time.time())

    def frame(self, choice: JSONDict, **extra: object) -> bytes:
        kind = "chat.completion.chunk" if self.body.endpoint == CHAT else "text_completion"
        return _dumps({"id": self.id, "object": kind, "created": self.created, "model": self.target.public_model,
                       "choices": [choice] if choice else [], **extra})

    def choice(self, piece: str, finish: str | None = None) -> JSONDict:
        if self.body.endpoint == CHAT:
            return {"index": 0, "delta": {"content": piece} if piece or not finish else {}, "finish_reason": finish}
        return {"index": 0, "text": piece, "finish_reason": finish}

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        delay = settings.TOLLGATE_DEMO_TOKEN_DELAY_MS / 1000
        pieces = tokens(self.text)
        limit = self.body.max_tokens or len(pieces)
        if self.body.endpoint == CHAT:
            yield Chunk(data=self.frame({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}))
        for piece in pieces[:limit]:
            if delay:
                await asyncio.sleep(delay)
            yield Chunk(data=self.frame(self.choice(piece)), text=piece)
        yield Chunk(data=self.frame(self.choice("", "stop" if limit >= len(pieces) else "length")), finished=True)
        usage = usage_for(self.body, "".join(pieces[:limit]))
        yield Chunk(data=self.frame({}, usage=usage_json(usage)), usage=usage, usage_only=True)

    async def aclose(self) -> None:
        return None


class DemoProvider:
    name = "demo"

    async def open_stream(self, target: Target, body: ApiRequest) -> DemoStream:
        """Return the paced stream of the demo answer."""
        return DemoStream(target, body)

    async def complete(self, target: Target, body: ApiRequest) -> Completion:
        """Return the demo answer at once (embeddings: a deterministic unit vector per input)."""
        created, model = int(time.time()), target.public_model
        if body.endpoint == EMBEDDINGS:
            inputs = body.prompt_texts()
            data = [{"object": "embedding", "index": i, "embedding": embedding(t)} for i, t in enumerate(inputs)]
            usage = Usage(prompt_tokens=sum(len(tokens(t)) for t in inputs))
            payload = {"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}}
            return Completion(payload=payload, usage=usage)
        pieces = tokens(reply_for(body))
        limit = body.max_tokens or len(pieces)
        text = "".join(pieces[:limit])
        usage = usage_for(body, text)
        finish = "stop" if limit >= len(pieces) else "length"
        if body.endpoint == COMPLETIONS:
            choice: JSONDict = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            kind, prefix = "text_completion", "cmpl"
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            kind, prefix = "chat.completion", "chatcmpl"
        payload = {"id": f"{prefix}-demo{uuid.uuid4().hex[:20]}", "object": kind, "created": created, "model": model,
                   "choices": [choice], "usage": usage_json(usage)}
        return Completion(payload=payload, usage=usage, text=text)
