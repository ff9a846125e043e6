"""The Responses API relayed to a provider that speaks it (OpenAI, Azure OpenAI): the client's body, nearly as it is.

Tollgate keeps the conversation, not the provider: ``previous_response_id`` is replaced by the stored turns (put
before this request's input) and the provider is asked not to store anything (``store: false``), so a conversation
can move between deployments and providers, and is deleted when Tollgate's retention says so. Background requests
are run by Tollgate's own workers, so ``background`` is never sent. The answer names the model the client asked for
and carries Tollgate's response id, the one stored.
https://platform.openai.com/docs/api-reference/responses/create
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from .. import responses_store
from ..errors import ProviderError
from . import http
from .base import (
    ApiRequest, Chunk, Completion, JSONDict, StreamTranslator, Target, Upstream, UpstreamReply, UpstreamRequest, Usage,
    encode_json,
)

PATH = "/responses"
NOT_SENT = ("previous_response_id", "background")
FINAL = ("response.completed", "response.incomplete", "response.failed")
TEXT_DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta", "response.reasoning_text.delta",
               "response.refusal.delta")


def usage_of(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("input_tokens_details") if isinstance(raw.get("input_tokens_details"), dict) else {}
    return Usage(prompt_tokens=int(raw.get("input_tokens") or 0), completion_tokens=int(raw.get("output_tokens") or 0),
                 cached_tokens=int(details.get("cached_tokens") or 0),
                 cache_write_tokens=int(details.get("cache_write_tokens") or 0))


def replayable(items: list[Any]) -> list[Any]:
    """Earlier turns as input for a provider that stores nothing: item ids dropped (they name items it never kept),
    and reasoning items only when they carry their encrypted content (without it the provider cannot take them)."""
    kept = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "reasoning":
            if item.get("encrypted_content"):
                kept.append(item)
            continue
        kept.append({name: value for name, value in item.items() if name != "id"})
    return kept


def output_text(response: JSONDict) -> str:
    """The text of a Response's output, for a token estimate when the provider reports no usage."""
    texts = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("arguments"), str):
            texts.append(item["arguments"])
        for part in item.get("content") or ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return "".join(texts)


class ResponsesProvider:
    name = "responses"

    def payload(self, target: Target, body: ApiRequest) -> JSONDict:
        payload = {name: value for name, value in body.data.items() if name not in NOT_SENT}
        payload["model"], payload["store"] = target.upstream_model, False
        history = body.state.get("history")
        if history:
            this_turn = body.data["input"]
            if isinstance(this_turn, str):
                this_turn = [{"type": "message", "role": "user", "content": this_turn}]
            payload["input"] = [*replayable(history), *this_turn]
        return payload

    def build_request(self, target: Target, body: ApiRequest) -> UpstreamRequest:
        """Return the request to the provider's /responses. Raises nothing."""
        payload = self.payload(target, body)
        if target.kind == "azure":
            from .azure import request_for

            return request_for(target, PATH, payload)
        headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        return UpstreamRequest.post_json(target.base_url.rstrip("/") + PATH, payload, headers)

    def rewrite(self, target: Target, body: ApiRequest, response: JSONDict) -> JSONDict:
        """The provider's Response as the client's: its model name, Tollgate's id and the parameters it sent."""
        state = body.state
        return {**response, "id": state.get("response_id") or response.get("id"), "model": target.public_model,
                "previous_response_id": body.data.get("previous_response_id"),
                "store": state.get("store", True), "background": bool(body.data.get("background"))}

    def stream_translator(self, target: Target, body: ApiRequest) -> StreamTranslator:
        """Return a translator passing each event on, its Response (if any) rewritten and its usage read."""
        state = body.state

        def translate(payload: str) -> list[Chunk]:
            try:
                data = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise ProviderError("The provider sent a malformed event.", status=502, code="upstream_error",
                                    permanent=False) from None
            if not isinstance(data, dict) or not isinstance(kind := data.get("type"), str):
                return []
            if kind == "error":
                raise ProviderError("The provider failed mid-stream.", status=502, code="upstream_error", permanent=False)
            if isinstance(sequence := data.get("sequence_number"), int):
                state["sequence_number"] = sequence + 1
            usage, finished, raw = None, False, payload.encode()
            if isinstance(response := data.get("response"), dict):
                data["response"] = self.rewrite(target, body, response)
                state["streamed"] = True
                if kind in FINAL:
                    usage, finished = usage_of(response.get("usage")), True
                    state["final"] = data["response"]
                raw = encode_json(data)
            text = data.get("delta") if kind in TEXT_DELTAS and isinstance(data.get("delta"), str) else ""
            return [Chunk(data=raw, text=text, usage=usage, finished=finished, event=kind)]

        return translate

    async def open_stream(self, target: Target, body: ApiRequest) -> Upstream:
        """Return the opened event stream. Raises ProviderError before any byte reaches the client."""
        from ..upstream import HttpUpstream, build  # proxy.upstream imports the provider registry

        response = await http.send(await build(self, target, body))
        if response.status >= 400:
            raise self.error_for(await http.reply(response))
        return SavingStream(body, HttpUpstream(http.lines(response), self.stream_translator(target, body),
                                               response.close))

    def parse_response(self, target: Target, body: ApiRequest, data: JSONDict) -> Completion:
        """Return the provider's Response as the client's, with its usage read out."""
        return Completion(payload=self.rewrite(target, body, data), usage=usage_of(data.get("usage")),
                          text=output_text(data))

    def error_for(self, response: UpstreamReply) -> ProviderError:
        """Return the mapped error for an upstream 4xx/5xx."""
        return http.status_error(response)


class SavingStream:
    """The provider's events, with the final Response stored just before its event goes out."""

    def __init__(self, body: ApiRequest, inner: Upstream) -> None:
        self.body, self.inner = body, inner

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        async for chunk in self.inner:
            if chunk.finished and (final := self.body.state.pop("final", None)) is not None:
                await responses_store.save(self.body, final)
            yield chunk
            if chunk.event == "response.failed":
                # The client has the provider's own account of the failure; the row and the health of the
                # deployment must say it failed too. Nothing more is sent (see ResponsesDialect.error_event).
                self.body.state["ended"] = True
                raise ProviderError("The provider failed to answer.", status=502, code="upstream_error",
                                    permanent=False)

    async def aclose(self) -> None:
        await self.inner.aclose()
