"""Anthropic's native Messages API, translated to and from OpenAI chat completions.

Request: https://docs.anthropic.com/en/api/messages
Stream: https://docs.anthropic.com/en/api/messages-streaming
"""

from __future__ import annotations

import json
import time
from typing import Any


from ..errors import GatewayError, ProviderError
from .base import CHAT, ApiRequest, Chunk, Completion, JSONDict, StreamTranslator, Target, UpstreamReply, UpstreamRequest, Usage
from .http import status_error

API_VERSION = "2023-06-01"
# Anthropic requires max_tokens; OpenAI clients usually leave it out.
DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
    "refusal": "content_filter", "model_context_window_exceeded": "length",
}
UNSUPPORTED_PARAMS = ("tools", "tool_choice", "functions", "function_call")


def _finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _text_blocks(content: Any, param: str) -> list[JSONDict]:
    """Return Anthropic text blocks for OpenAI message content; raise GatewayError for anything but text."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        blocks: list[JSONDict] = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise GatewayError("Only text content is supported for this model.", param=param)
            # Anthropic rejects empty text blocks, and an empty part carries nothing.
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        return blocks
    raise GatewayError("Message content must be a string or a list of text parts.", param=param)


def _translate_messages(messages: Any) -> tuple[str, list[JSONDict]]:
    """Return the joined system prompt and strictly alternating user/assistant turns."""
    if not isinstance(messages, list) or not messages:
        raise GatewayError("messages must be a non-empty list.", param="messages")
    system: list[str] = []
    turns: list[JSONDict] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        param = f"messages[{i}].content"
        if role in ("system", "developer"):
            system.extend(block["text"] for block in _text_blocks(message.get("content"), param))
            continue
        if role not in ("user", "assistant"):
            message_text = f"Messages with role {role!r} are not supported for this model."
            raise GatewayError(message_text, param=f"messages[{i}].role")
        if message.get("tool_calls") or message.get("function_call"):
            raise GatewayError("Tool calls are not supported for this model.", param=f"messages[{i}].tool_calls")
        blocks = _text_blocks(message.get("content"), param)
        if not blocks:
            continue
        # Anthropic requires user and assistant turns to alternate, so same-role neighbours become one turn.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(system), turns


def _payload(target: Target, body: ApiRequest) -> JSONDict:
    data = body.data
    for param in UNSUPPORTED_PARAMS:
        if data.get(param):
            raise GatewayError("Tools are not supported for this model.", param=param)
    if data.get("n") not in (None, 1):
        raise GatewayError("Only n=1 is supported for this model.", param="n")
    system, messages = _translate_messages(data.get("messages"))
    max_tokens = data.get("max_completion_tokens") or data.get("max_tokens") or body.max_tokens
    payload: JSONDict = {"model": target.upstream_model, "messages": messages,
                         "max_tokens": max_tokens or DEFAULT_MAX_TOKENS, "stream": body.stream}
    if system:
        payload["system"] = system
    for name in ("temperature", "top_p"):
        if data.get(name) is not None:
            payload[name] = data[name]
    stop = data.get("stop")
    if stop:
        payload["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    return payload


def _usage(raw: Any) -> Usage:
    """Return Usage for an Anthropic usage object; prompt tokens include cache reads and writes."""
    raw = raw if isinstance(raw, dict) else {}
    cache_read = raw.get("cache_read_input_tokens") or 0
    prompt = (raw.get("input_tokens") or 0) + cache_read + (raw.get("cache_creation_input_tokens") or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=raw.get("output_tokens") or 0, cached_tokens=cache_read)


def _openai_usage(usage: Usage) -> JSONDict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


class _StreamTranslator:
    """Turns one Anthropic event stream into OpenAI chunks; holds the id, model and usage seen so far."""

    def __init__(self, target: Target) -> None:
        self.model = target.public_model
        self.created = int(time.time())
        self.id = ""
        self.usage: JSONDict = {}

    def _chunk(self, choices: list[JSONDict], **extra: Any) -> bytes:
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return json.dumps({**obj, "choices": choices, **extra}, separators=(",", ":")).encode()

    def __call__(self, payload: str) -> list[Chunk]:
        try:
            event = json.loads(payload)
            kind = event["type"]
        except (ValueError, TypeError, KeyError):
            raise _mid_stream_error() from None
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = message.get("id") or ""
            self.usage = dict(message.get("usage") or {})
            delta = {"role": "assistant", "content": ""}
            return [Chunk(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))]
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            # Thinking and tool-input deltas have no OpenAI chat equivalent here; only text is forwarded.
            if delta.get("type") != "text_delta" or not delta.get("text"):
                return []
            choice = {"index": 0, "delta": {"content": delta["text"]}, "finish_reason": None}
            return [Chunk(self._chunk([choice]), text=delta["text"])]
        if kind == "message_delta":
            return self._finish(event)
        if kind == "error":
            # The upstream message can quote the prompt; only the fact of failure is passed on.
            raise _mid_stream_error()
        return []  # ping, content_block_start/stop, message_stop and future event types

    def _finish(self, event: JSONDict) -> list[Chunk]:
        # message_delta usage is cumulative; newer API versions repeat the input counts there too.
        self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if isinstance(v, int)})
        usage = _usage(self.usage)
        reason = _finish_reason((event.get("delta") or {}).get("stop_reason"))
        finish = Chunk(self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}]), finished=True)
        usage_chunk = Chunk(self._chunk([], usage=_openai_usage(usage)), usage=usage, usage_only=True)
        return [finish, usage_chunk]


def _mid_stream_error() -> ProviderError:
    return ProviderError("The provider failed mid-stream.", status=502, code="upstream_error", permanent=False)


class AnthropicProvider:
    name = "anthropic"

    def build_request(self, target: Target, body: ApiRequest) -> UpstreamRequest:
        """Return the POST /v1/messages request. Raises GatewayError for other endpoints or non-text content."""
        if body.endpoint != CHAT:
            raise GatewayError(
                f"The {body.endpoint} endpoint is not supported for this model's provider.",
                param=None, code="unsupported_endpoint",
            )
        headers = {"x-api-key": target.api_key, "anthropic-version": API_VERSION}
        url = f"{target.base_url.rstrip('/')}/v1/messages"
        return UpstreamRequest.post_json(url, _payload(target, body), headers)

    def stream_translator(self, target: Target, body: ApiRequest) -> StreamTranslator:
        """Return a stateful function from one SSE payload to OpenAI chunks; it raises ProviderError on `error`."""
        return _StreamTranslator(target)

    def parse_response(self, target: Target, body: ApiRequest, data: JSONDict) -> Completion:
        """Return the OpenAI chat.completion for an Anthropic message."""
        blocks = data.get("content") or []
        text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        usage = _usage(data.get("usage"))
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": _finish_reason(data.get("stop_reason"))}
        payload = {"id": data.get("id", ""), "object": "chat.completion", "created": int(time.time()),
                   "model": target.public_model, "choices": [choice], "usage": _openai_usage(usage)}
        return Completion(payload=payload, usage=usage, text=text)

    def error_for(self, response: UpstreamReply) -> ProviderError:
        """Return the mapped ProviderError; Anthropic's 529 overloaded becomes a retryable 502."""
        return status_error(response)
