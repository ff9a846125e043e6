"""A Chat Completions stream as the Responses API's semantic events.

response.created and response.in_progress go out as soon as the provider's stream opens; then each output item is
opened (output_item.added, content_part.added), filled (output_text.delta, reasoning_text.delta,
function_call_arguments.delta) and closed (…done, output_item.done) as the chat deltas arrive; the stream ends with
response.completed (or response.incomplete) carrying the whole Response and its usage, saved first so a client that
saw it can continue the conversation at once. Every event has a sequence_number.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from asgiref.sync import sync_to_async

from .. import responses_store
from ..providers.base import ApiRequest, Chunk, JSONDict, Upstream, Usage, encode_json
from ..streaming import estimate
from .responses_items import (
    call_item, item_id, message_item, reasoning_item, reasoning_of, response_object, status_of, usage_json,
)


class OpenItem:
    """The output item being streamed: its kind, place, id and what it has gathered so far."""

    def __init__(self, kind: str, index: int, id_: str, call_id: str = "", name: str = "") -> None:
        self.kind, self.index, self.id = kind, index, id_
        self.call_id, self.name = call_id, name
        self.text: list[str] = []
        self.refusal: list[str] = []


class EventStream:
    """Chat chunks in, Responses events out (``Chunk.event`` named). Usage goes on a data-less chunk as it arrives."""

    def __init__(self, body: ApiRequest, upstream: Upstream) -> None:
        self.body, self.upstream = body, upstream
        self.output: list[JSONDict] = []
        self.current: OpenItem | None = None
        self.calls: dict[int, OpenItem] = {}
        self.usage: Usage | None = None
        self.reasoning_tokens = 0
        self.finish_reason: Any = None
        self.said: list[str] = []  # the model's text so far (answer, reasoning, arguments), for a token estimate

    def event(self, kind: str, said: str = "", more: bool = False, **fields: Any) -> Chunk:
        """One event; ``said`` is the model's text in it, kept for token estimates."""
        sequence = self.body.state.get("sequence_number", 0)
        self.body.state["sequence_number"] = sequence + 1  # error_event numbers an in-band error after the last one
        if said:
            self.said.append(said)
        return Chunk(data=encode_json({"type": kind, "sequence_number": sequence, **fields}), event=kind, text=said,
                     more=more)

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        started = response_object(self.body, status="in_progress", output=[])
        self.body.state["streamed"] = True
        # The events one upstream chunk makes go to the client in one write (Chunk.more on all but the last): a
        # Responses stream has more events than the chat stream it comes from, and each write costs.
        yield self.event("response.created", response=started, more=True)
        yield self.event("response.in_progress", response=started)
        async for chunk in self.upstream:
            if chunk.usage is not None:
                self.usage = chunk.usage
                yield Chunk(data=None, usage=chunk.usage)  # on the meter at once: a client leaving later is billed exactly
            if chunk.data is None:
                continue
            for event in together(self.translate(chunk.data, chunk.parsed)):
                yield event
        closing = self.close()
        if not self.output:  # no text and no call: still one (empty) message, as the non-streamed answer has
            closing += self.open_message() + self.close()
        for event in together(closing, more=True):  # written with response.completed
            yield event
        yield await self.final()

    def translate(self, raw: bytes, parsed: JSONDict | None = None) -> list[Chunk]:
        try:
            data = parsed if parsed is not None else orjson.loads(raw)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(data, dict):
            return []
        usage = data.get("usage")
        if isinstance(usage, dict) and isinstance(details := usage.get("completion_tokens_details"), dict):
            self.reasoning_tokens = int(details.get("reasoning_tokens") or 0)
        events: list[Chunk] = []
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # the Responses API has one answer; a chat provider's extra choices are not asked for
            delta = choice.get("delta")
            if isinstance(delta, dict):
                events.extend(self.on_delta(delta))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def on_delta(self, delta: JSONDict) -> list[Chunk]:
        events: list[Chunk] = []
        reasoning = reasoning_of(delta)
        if reasoning:
            if self.current is None or self.current.kind != "reasoning":
                events += self.close() + self.open_reasoning()
            events += self.add_text(reasoning, "response.reasoning_text.delta")
        content, refused = delta.get("content"), delta.get("refusal")
        if isinstance(content, str) and content or isinstance(refused, str) and refused:
            if self.current is None or self.current.kind != "message":
                events += self.close() + self.open_message()
            if isinstance(content, str) and content:
                events += self.add_text(content, "response.output_text.delta", logprobs=[])
            if isinstance(refused, str):
                assert self.current is not None
                self.current.refusal.append(refused)
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                events += self.on_call(call)
        return events

    def on_call(self, call: JSONDict) -> list[Chunk]:
        events: list[Chunk] = []
        index = call.get("index")
        if not isinstance(index, int):  # some providers leave it out: a new call id is a new call
            known = {item.call_id: i for i, item in self.calls.items()}
            index = known.get(call.get("id"), len(self.calls)) if call.get("id") else max(self.calls, default=0)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        item = self.calls.get(index)
        if item is None:
            events += self.close()
            item = self.calls[index] = self.current = OpenItem(
                "function_call", len(self.output), item_id("fc"), str(call.get("id") or item_id("call")),
                str(function.get("name") or ""))
            added = call_item(item.call_id, item.name, "", status="in_progress", id_=item.id)
            events.append(self.event("response.output_item.added", output_index=item.index, item=added))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.text.append(arguments)
            events.append(self.event("response.function_call_arguments.delta", said=arguments, item_id=item.id,
                                     output_index=item.index, delta=arguments))
        return events

    def add_text(self, text: str, kind: str, **extra: Any) -> list[Chunk]:
        item = self.current
        assert item is not None
        item.text.append(text)
        return [self.event(kind, said=text, item_id=item.id, output_index=item.index, content_index=0, delta=text,
                           **extra)]

    def open_message(self) -> list[Chunk]:
        item = self.current = OpenItem("message", len(self.output), item_id("msg"))
        added = {**message_item("", status="in_progress", id_=item.id), "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [self.event("response.output_item.added", output_index=item.index, item=added),
                self.event("response.content_part.added", item_id=item.id, output_index=item.index, content_index=0,
                           part=part)]

    def open_reasoning(self) -> list[Chunk]:
        item = self.current = OpenItem("reasoning", len(self.output), item_id("rs"))
        added = {"id": item.id, "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
        return [self.event("response.output_item.added", output_index=item.index, item=added),
                self.event("response.content_part.added", item_id=item.id, output_index=item.index, content_index=0,
                           part={"type": "reasoning_text", "text": ""})]

    def close(self) -> list[Chunk]:
        """The events that finish the open item, which joins the output."""
        item, self.current = self.current, None
        if item is None:
            return []
        text, where = "".join(item.text), {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            done = call_item(item.call_id, item.name, text, id_=item.id)
            events = [self.event("response.function_call_arguments.done", **where, name=item.name, arguments=text)]
        elif item.kind == "reasoning":
            done = reasoning_item(text, id_=item.id)
            part = done["content"][0]
            events = [self.event("response.reasoning_text.done", **where, content_index=0, text=text),
                      self.event("response.content_part.done", **where, content_index=0, part=part)]
        else:
            done = message_item(text, refusal_text="".join(item.refusal) if item.refusal else None, id_=item.id)
            events = [self.event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]),
                      self.event("response.content_part.done", **where, content_index=0, part=done["content"][0])]
        self.output.append(done)
        events.append(self.event("response.output_item.done", output_index=item.index, item=done))
        return events

    async def final(self) -> Chunk:
        """response.completed (or .incomplete) with the whole Response; saved before it is sent."""
        usage = self.usage
        if usage is None:  # the provider sent none: estimated, in a worker thread (it may tokenize a long prompt)
            usage = await sync_to_async(estimate)(self.body, "".join(self.said), None)
        status, incomplete = status_of(self.finish_reason)
        response = response_object(self.body, status=status, output=self.output,
                                   usage=usage_json(usage, self.reasoning_tokens), incomplete=incomplete)
        await responses_store.save(self.body, response)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        final = self.event(kind, response=response)
        final.finished = True
        return final

    async def aclose(self) -> None:
        await self.upstream.aclose()


def together(events: list[Chunk], *, more: bool = False) -> list[Chunk]:
    """The events marked to be written as one (all but the last, or all of them with ``more``)."""
    for event in events[:-1]:
        event.more = True
    if events and more:
        events[-1].more = True
    return events
