"""Anthropic's Messages API spoken natively: a /v1/messages body relayed to an Anthropic deployment as it is.

Only the model changes on the way in (the deployment's upstream name) and on the way out (the client's name, in
message_start and in a whole answer). Events go to the client unchanged; their usage, prompt-cache reads and
writes included, is read for the ledger (https://docs.anthropic.com/en/api/messages-streaming#event-types).
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import GatewayError, ProviderError
from .anthropic import API_VERSION
from .base import (
    MESSAGES, ApiRequest, Chunk, Completion, JSONDict, StreamTranslator, Target, UpstreamReply, UpstreamRequest, Usage,
)
from .http import status_error


def usage_of(raw: Any) -> Usage:
    """Usage for an Anthropic usage object: prompt tokens include the cache reads and writes."""
    raw = raw if isinstance(raw, dict) else {}

    def count(name: str) -> int:
        value = raw.get(name)
        return value if value.__class__ is int and value > 0 else 0

    read, written = count("cache_read_input_tokens"), count("cache_creation_input_tokens")
    return Usage(prompt_tokens=count("input_tokens") + read + written, completion_tokens=count("output_tokens"),
                 cached_tokens=read, cache_write_tokens=written)


def delta_text(delta: Any) -> str:
    """The generated text in a content_block_delta (answer, thinking or tool input), for estimates."""
    if not isinstance(delta, dict):
        return ""
    for name in ("text", "thinking", "partial_json"):
        value = delta.get(name)
        if isinstance(value, str):
            return value
    return ""


def mid_stream_error(event: JSONDict | None = None) -> ProviderError:
    # The upstream's message can quote the prompt: only its kind is passed on.
    error = event.get("error") if isinstance(event, dict) else None
    if isinstance(error, dict) and error.get("type") == "overloaded_error":
        return ProviderError("The provider is overloaded.", status=529, code="upstream_overloaded", permanent=False)
    return ProviderError("The provider failed mid-stream.", status=502, code="upstream_error", permanent=False)


class EventTranslator:
    """One Anthropic event stream: events passed on, message_start's model renamed, usage gathered."""

    def __init__(self, target: Target) -> None:
        self.model = target.public_model
        self.usage: JSONDict = {}

    def __call__(self, payload: str) -> list[Chunk]:
        try:
            event = json.loads(payload)
            kind = event["type"]
        except (ValueError, TypeError, KeyError):
            raise mid_stream_error() from None
        if not isinstance(kind, str):
            raise mid_stream_error()
        if kind == "content_block_delta":  # the common case: passed on as it came
            return [Chunk(data=payload.encode(), event=kind, text=delta_text(event.get("delta")))]
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self.usage = dict(message.get("usage") or {})
                message["model"] = self.model
                return [Chunk(data=json.dumps(event, separators=(",", ":")).encode(), event=kind)]
        elif kind == "message_delta":
            # Cumulative counts; newer API versions repeat the input and cache counts here too.
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if isinstance(v, int)})
            return [Chunk(data=payload.encode(), event=kind, usage=usage_of(self.usage))]
        elif kind == "message_stop":
            return [Chunk(data=payload.encode(), event=kind, finished=True)]
        elif kind == "error":
            raise mid_stream_error(event)
        return [Chunk(data=payload.encode(), event=kind)]  # ping, content blocks' start and stop, newer events


class MessagesProvider:
    name = "anthropic"

    def build_request(self, target: Target, body: ApiRequest) -> UpstreamRequest:
        """Return the POST /v1/messages request: the client's body with the deployment's model, and its betas."""
        if body.endpoint != MESSAGES:
            raise GatewayError(f"The {body.endpoint} endpoint is not spoken natively here.",
                               code="unsupported_endpoint")
        payload = {**body.data, "model": target.upstream_model}
        headers = {"x-api-key": target.api_key, "anthropic-version": API_VERSION}
        if beta := body.state.get("anthropic_beta"):  # checked to be feature names (proxy/dialects/messages.py)
            headers["anthropic-beta"] = beta
        return UpstreamRequest.post_json(f"{target.base_url.rstrip('/')}/v1/messages", payload, headers)

    def stream_translator(self, target: Target, body: ApiRequest) -> StreamTranslator:
        """Return a stateful function from one SSE payload to its event; it raises ProviderError on `error`."""
        return EventTranslator(target)

    def parse_response(self, target: Target, body: ApiRequest, data: JSONDict) -> Completion:
        """Return the Anthropic message as it came, named with the client's model, and its usage."""
        blocks = data.get("content") if isinstance(data.get("content"), list) else []
        text = "".join(delta_text(block) or as_input(block) for block in blocks)
        usage = usage_of(data.get("usage")) if isinstance(data.get("usage"), dict) else None
        return Completion(payload={**data, "model": target.public_model}, usage=usage, text=text)

    def error_for(self, response: UpstreamReply) -> ProviderError:
        """Return the mapped ProviderError (the upstream's body is never passed on)."""
        return status_error(response)


def as_input(block: Any) -> str:
    if isinstance(block, dict) and isinstance(block.get("input"), dict):
        return json.dumps(block["input"], separators=(",", ":"))
    return ""
