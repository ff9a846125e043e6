"""A Chat Completions stream as Anthropic's stream events (https://docs.anthropic.com/en/api/messages-streaming).

message_start, then one content block at a time (a text block, or a tool_use block per tool call whose arguments
arrive as input_json_delta), then message_delta with the stop reason and usage, then message_stop. Chat streams
report usage after the last choice, so message_start says 0 input tokens and message_delta carries the real
counts (the SDKs take message_delta's input_tokens when it has them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from billing import tokens

from ..errors import ProviderError
from ..providers.base import ApiRequest, Chunk, JSONDict, Upstream, Usage
from .messages_chat import message_id, stop_reason, tool_use_id, usage_json


def encode(data: JSONDict) -> bytes:
    return orjson.dumps(data)


def estimate(body: ApiRequest, text: str) -> Usage:
    """What proxy/streaming.estimate counts for a stream without usage (run in a worker thread)."""
    prompt, completion = tokens.estimate(body.prompt_texts(), text, model=body.model, chat=True)
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


class Blocks:
    """The content blocks opened so far: one open at a time, as Anthropic streams them."""

    def __init__(self) -> None:
        self.count = 0
        self.open: str | None = None  # "text", or the key of a tool call
        self.tools: dict[int, tuple[str, int]] = {}  # chat tool call index -> (its key, its block index)
        self.closed: set[str] = set()  # keys of the tool calls whose block is closed

    def close(self) -> list[Chunk]:
        if self.open is None:
            return []
        self.closed.add(self.open)
        self.open = None
        return [event("content_block_stop", {"type": "content_block_stop", "index": self.count - 1})]

    def start(self, kind: str, block: JSONDict) -> list[Chunk]:
        chunks = self.close()
        self.open = kind
        chunks.append(event("content_block_start", {"type": "content_block_start", "index": self.count,
                                                    "content_block": block}))
        self.count += 1
        return chunks

    def text(self, text: str) -> list[Chunk]:
        chunks = [] if self.open == "text" else self.start("text", {"type": "text", "text": ""})
        delta = {"type": "content_block_delta", "index": self.count - 1, "delta": {"type": "text_delta", "text": text}}
        chunks.append(event("content_block_delta", delta))
        return chunks

    def tool_call(self, call: JSONDict) -> list[Chunk]:
        index = call.get("index") if call.get("index").__class__ is int else 0
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        call_id = call.get("id")
        chunks: list[Chunk] = []
        # A new call: an index not seen yet, or (from servers that send no index) an id other than the index's.
        if index not in self.tools or (isinstance(call_id, str) and call_id and call_id != self.tools[index][0]):
            call_id = tool_use_id(call)
            block = {"type": "tool_use", "id": call_id, "name": str(function.get("name") or ""), "input": {}}
            chunks = self.start(f"tool:{call_id}", block)
            self.tools[index] = (call_id, self.count - 1)
        elif f"tool:{self.tools[index][0]}" in self.closed:
            # Anthropic's blocks do not interleave: arguments for a call whose block was closed cannot be sent.
            raise ProviderError("The provider interleaved the arguments of parallel tool calls.", status=502,
                                code="upstream_error", permanent=False)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            chunks.append(event("content_block_delta", {"type": "content_block_delta", "index": self.tools[index][1],
                                                        "delta": delta}))
        return chunks


def event(name: str, data: JSONDict) -> Chunk:
    return Chunk(data=encode(data), event=name)


class MessagesStream:
    """Reads chat chunks from the upstream and yields Anthropic events; closing it closes the upstream."""

    def __init__(self, body: ApiRequest, upstream: Upstream) -> None:
        self.body, self.upstream = body, upstream

    async def aclose(self) -> None:
        await self.upstream.aclose()

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        body = self.body
        message = {"id": message_id(), "type": "message", "role": "assistant", "model": body.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        yield event("message_start", {"type": "message_start", "message": message})
        blocks = Blocks()
        finish: Any = None
        usage: Usage | None = None
        texts: list[str] = []
        async for chunk in self.upstream:
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.data is None:
                if chunk.text:
                    texts.append(chunk.text)
                    yield Chunk(data=None, text=chunk.text)
                continue
            out, reason, arguments = self.translate(chunk, blocks)
            finish = reason or finish
            # The meter counts what was generated once, on the chunk's last event; tool arguments are output too.
            generated = chunk.text + arguments
            if generated:
                texts.append(generated)
            if out:
                out[-1].text = generated
                for item in out:
                    yield item
            elif generated:
                yield Chunk(data=None, text=generated)
        for item in blocks.close():
            yield item
        reported = usage
        if usage is None:
            # No usage from the provider: estimated as the ledger will (off the event loop); the chunk carries
            # none, so the row marks its numbers as estimated.
            usage = await asyncio.to_thread(estimate, body, "".join(texts))
        delta = {"stop_reason": stop_reason(finish), "stop_sequence": None}
        yield Chunk(data=encode({"type": "message_delta", "delta": delta, "usage": usage_json(usage)}),
                    event="message_delta", usage=reported)
        yield Chunk(data=encode({"type": "message_stop"}), event="message_stop", finished=True)

    @staticmethod
    def translate(chunk: Chunk, blocks: Blocks) -> tuple[list[Chunk], Any, str]:
        """The events for one chat chunk, its finish reason if it has one, and the tool arguments it carried."""
        assert chunk.data is not None
        try:
            data = chunk.parsed if chunk.parsed is not None else orjson.loads(chunk.data)
        except orjson.JSONDecodeError:
            raise ProviderError("The provider sent a malformed event.", status=502, code="upstream_error",
                                permanent=False) from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return [], None, ""  # a usage chunk, or one we cannot read
        choice = choices[0]
        out: list[Chunk] = []
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        content = delta.get("content")
        if isinstance(content, str) and content:
            out.extend(blocks.text(content))
        arguments = ""
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                out.extend(blocks.tool_call(call))
                function = call.get("function")
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    arguments += function["arguments"]
        return out, choice.get("finish_reason"), arguments
