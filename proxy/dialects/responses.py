"""OpenAI's Responses API (``POST /v1/responses``), served by any provider.

A provider that speaks Responses (OpenAI, Azure: ``options["responses"]``) gets the request natively
(proxy/providers/responses_native.py); any other gets its Chat Completions form (responses_items.to_chat) and the
answer comes back as a Response object or as the Responses stream events (responses_events.py). Either way Tollgate
keeps the conversation: ``previous_response_id`` is resolved from the tenant's stored responses before routing, and
each answer is stored before the client sees it complete (proxy/responses_store.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.http import HttpResponse

from .. import responses_store, sse
from ..providers.base import RESPONSES, ApiRequest, Completion, JSONDict, Upstream, encode_json
from ..streaming import estimate
from . import responses_items
from .responses_checks import check_body
from .responses_events import EventStream
from .responses_items import output_items, response_object, status_of, usage_json

if TYPE_CHECKING:
    from accounts.keys import Caller

    from ..errors import GatewayError


class ResponsesDialect:
    endpoint = RESPONSES
    done = b""  # response.completed (or an error) ends the stream: no [DONE]

    def parse(self, data: JSONDict) -> ApiRequest:
        """The validated request. Raises a 4xx GatewayError naming the bad parameter."""
        return check_body(data)

    async def prepare(self, body: ApiRequest, caller: Caller) -> None:
        """Note who asks and what to store; load the conversation so far. Raises 404 for an unknown previous id."""
        state, data = body.state, body.data
        state["tenant_id"], state["key_id"] = caller.tenant_id, caller.key_id
        state["store"] = data.get("store") is not False  # OpenAI stores responses unless told not to
        state["input_items"] = responses_items.input_items(data)
        state.setdefault("response_id", responses_store.new_id())
        if isinstance(previous := data.get("previous_response_id"), str):
            history = state["history"] = await responses_store.history(caller, previous)
            if history:
                # The stored turns go with the request: a long conversation makes it large, so it is translated,
                # sized and encoded off the event loop as a large body is (measuring it is too, hence the thread).
                body.size += len(await asyncio.to_thread(encode_json, {"input": history}))

    def to_chat(self, body: ApiRequest) -> ApiRequest:
        """The Chat Completions request asking the same (what chat cannot carry is refused when it is sent)."""
        return responses_items.to_chat(body)

    def completion(self, body: ApiRequest, completion: Completion) -> Completion:
        """The chat answer as a Response object; usage unchanged."""
        payload = completion.payload
        choices = [c for c in payload.get("choices") or () if isinstance(c, dict)]
        choice = next((c for c in choices if c.get("index", 0) == 0), choices[0] if choices else {})
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        status, incomplete = status_of(choice.get("finish_reason"))
        usage = None
        if completion.usage is not None:
            details = (payload.get("usage") or {}).get("completion_tokens_details")
            reasoning = int(details.get("reasoning_tokens") or 0) if isinstance(details, dict) else 0
            usage = usage_json(completion.usage, reasoning)
        response = response_object(body, status=status, output=output_items(message), usage=usage,
                                   incomplete=incomplete)
        return Completion(payload=response, usage=completion.usage, text=completion.text)

    async def finish(self, body: ApiRequest, completion: Completion) -> None:
        """Before a whole answer goes out: fill in usage the provider did not report, and store the response."""
        response = completion.payload
        if response.get("usage") is None:
            usage = await sync_to_async(estimate)(body, completion.text, None)
            response["usage"] = usage_json(usage)
            completion.raw = None
        await responses_store.save(body, response)

    def stream(self, body: ApiRequest, upstream: Upstream) -> Upstream:
        """Chat chunks in, the Responses API's semantic events out."""
        return EventStream(body, upstream)

    def error_response(self, error: GatewayError) -> HttpResponse:
        """OpenAI's error envelope, as on every other /v1 path, naming the client's parameter."""
        error.param = client_param(error.param)
        return error.response()

    def error_event(self, body: ApiRequest | None, error: GatewayError) -> bytes:
        """An `error` event, then `response.failed` once the client has seen the response begin."""
        state = body.state if body is not None else {}
        if state.get("ended"):
            return b""  # the provider's response.failed went out already
        sequence = state.get("sequence_number", 0)
        frames = event("error", {"type": "error", "code": error.code, "message": error.message, "param": error.param,
                                 "sequence_number": sequence})
        if body is not None and state.get("streamed"):
            # The SDK's ResponseError takes only OpenAI's own codes: a rate limit, or a failure on the server's side.
            code = "rate_limit_exceeded" if error.status == 429 else "server_error"
            failed = response_object(body, status="failed", output=[], error={"code": code, "message": error.message})
            frames += event("response.failed", {"type": "response.failed", "sequence_number": sequence + 1,
                                                "response": failed})
        state["sequence_number"] = sequence + 2
        return frames


# A chat provider refusing the translated request names a Chat Completions parameter; the client sent its Responses
# counterpart. (A message's index is not the input item's: instructions and stored turns come first.)
CHAT_PARAMS = {"response_format": "text.format", "max_completion_tokens": "max_output_tokens",
               "max_tokens": "max_output_tokens", "messages": "input", "functions": "tools", "function_call": "tool_choice"}


def client_param(param: str | None) -> str | None:
    if param is None:
        return None
    head = param.split("[", 1)[0].split(".", 1)[0]
    return CHAT_PARAMS.get(head, param)


def event(name: str, data: Any) -> bytes:
    return sse.event(name, json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())


DIALECT = ResponsesDialect()
