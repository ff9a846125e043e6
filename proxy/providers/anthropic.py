"""Anthropic's native Messages API, translated to and from OpenAI chat completions.

Request: https://docs.anthropic.com/en/api/messages
Stream: https://docs.anthropic.com/en/api/messages-streaming
"""

from __future__ import annotations

import json
import time
from typing import Any


from ..errors import GatewayError, ProviderError
from . import anthropic_content as content
from .base import CHAT, ApiRequest, Chunk, Completion, JSONDict, StreamTranslator, Target, UpstreamReply, UpstreamRequest, Usage
from .http import status_error

API_VERSION = "2023-06-01"
# Anthropic requires max_tokens; OpenAI clients usually leave it out.
DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
    "refusal": "content_filter", "model_context_window_exceeded": "length",
}


def _finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _payload(target: Target, body: ApiRequest) -> JSONDict:
    data = body.data
    content.check_unsupported(data)
    system, messages = content.translate_messages(data.get("messages"))
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
    if data.get("tools"):
        payload["tools"] = content.tools(data["tools"])
    choice = content.tool_choice(data.get("tool_choice"), data.get("parallel_tool_calls"))
    if choice is not None and payload.get("tools"):
        payload["tool_choice"] = choice
    elif data.get("tool_choice") not in (None, "auto", "none"):
        raise GatewayError("tool_choice needs tools.", param="tool_choice")
    if (answer := content.answer_tool(data)) is not None:
        payload["tools"], payload["tool_choice"] = [answer], {"type": "tool", "name": answer["name"]}
    return payload


def _usage(raw: Any) -> Usage:
    """Return Usage for an Anthropic usage object; prompt tokens include cache reads and writes."""
    raw = raw if isinstance(raw, dict) else {}
    cache_read = raw.get("cache_read_input_tokens") or 0
    cache_write = raw.get("cache_creation_input_tokens") or 0
    return Usage(prompt_tokens=(raw.get("input_tokens") or 0) + cache_read + cache_write,
                 completion_tokens=raw.get("output_tokens") or 0, cached_tokens=cache_read, cache_write_tokens=cache_write)


def _openai_usage(usage: Usage) -> JSONDict:
    # OpenAI's usage has no field for cache writes: they are in prompt_tokens, and the ledger row keeps them apart.
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _tool_call(block: JSONDict, index: int | None = None, arguments: str | None = None) -> JSONDict:
    """An OpenAI tool call for a tool_use block: its input as JSON text (or the given start of it, when streaming)."""
    call: JSONDict = {} if index is None else {"index": index}
    text = json.dumps(block.get("input") or {}, ensure_ascii=False) if arguments is None else arguments
    return {**call, "id": block.get("id") or "", "type": "function",
            "function": {"name": block.get("name") or "", "arguments": text}}


class _StreamTranslator:
    """Turns one Anthropic event stream into OpenAI chunks; holds the id, model, usage and tool calls seen so far."""

    def __init__(self, target: Target, answer: str | None = None) -> None:
        self.answer = answer  # the tool carrying a JSON answer: its input is streamed as content
        self.answer_block: int | None = None
        self.model = target.public_model
        self.created = int(time.time())
        self.id = ""
        self.usage: JSONDict = {}
        self.tools: dict[int, int] = {}  # Anthropic content block index -> OpenAI tool call index

    def _chunk(self, choices: list[JSONDict], **extra: Any) -> bytes:
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return json.dumps({**obj, "choices": choices, **extra}, separators=(",", ":")).encode()

    def _delta(self, delta: JSONDict, text: str = "") -> list[Chunk]:
        return [Chunk(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]), text=text)]

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
            return self._delta({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") != "tool_use":
                return []
            if self.answer is not None and block.get("name") == self.answer:
                self.answer_block = event.get("index", -1)
                return []
            index = self.tools[event.get("index", -1)] = len(self.tools)
            return self._delta({"tool_calls": [_tool_call(block, index, "")]}, text=block.get("name") or "")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return self._delta({"content": delta["text"]}, text=delta["text"])
            index = self.tools.get(event.get("index", -1))
            if delta.get("type") == "input_json_delta" and delta.get("partial_json") and \
                    self.answer_block is not None and event.get("index", -1) == self.answer_block:
                return self._delta({"content": delta["partial_json"]}, text=delta["partial_json"])
            if delta.get("type") == "input_json_delta" and index is not None and delta.get("partial_json"):
                call = {"index": index, "function": {"arguments": delta["partial_json"]}}
                return self._delta({"tool_calls": [call]}, text=delta["partial_json"])
            return []  # thinking and signature deltas have no OpenAI chat equivalent: not forwarded
        if kind == "message_delta":
            return self._finish(event)
        if kind == "error":
            # The upstream message can quote the prompt; only the fact of failure is passed on.
            raise _mid_stream_error()
        return []  # ping, content_block_stop, message_stop and future event types

    def _finish(self, event: JSONDict) -> list[Chunk]:
        # message_delta usage is cumulative; newer API versions repeat the input counts there too.
        self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if isinstance(v, int)})
        usage = _usage(self.usage)
        reason = _finish_reason((event.get("delta") or {}).get("stop_reason"))
        if reason == "tool_calls" and self.answer_block is not None and not self.tools:
            reason = "stop"  # the only tool called was the JSON answer's: to the client, a plain answer
        finish = Chunk(self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}]), finished=True)
        usage_chunk = Chunk(self._chunk([], usage=_openai_usage(usage)), usage=usage, usage_only=True)
        return [finish, usage_chunk]


def _mid_stream_error() -> ProviderError:
    return ProviderError("The provider failed mid-stream.", status=502, code="upstream_error", permanent=False)


class AnthropicProvider:
    name = "anthropic"

    def build_request(self, target: Target, body: ApiRequest) -> UpstreamRequest:
        """Return the POST /v1/messages request. Raises GatewayError (400 naming the param) for what Anthropic cannot
        take: other endpoints, n > 1, legacy functions, unsupported content or JSON schemas."""
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
        return _StreamTranslator(target, content.answer_name(body.data))

    def parse_response(self, target: Target, body: ApiRequest, data: JSONDict) -> Completion:
        """Return the OpenAI chat.completion for an Anthropic message."""
        blocks = [b for b in data.get("content") or [] if isinstance(b, dict)]
        text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
        answer = content.answer_name(body.data)
        answers = [b for b in blocks if b.get("type") == "tool_use" and answer is not None and b.get("name") == answer]
        if answers:  # a JSON answer: the forced tool's input is the content, as OpenAI's JSON modes return it
            text = json.dumps(answers[0].get("input") or {}, ensure_ascii=False)
        calls = [_tool_call(b) for b in blocks if b.get("type") == "tool_use" and b not in answers]
        usage = _usage(data.get("usage"))
        # OpenAI sends null content with tool calls and no text.
        message: JSONDict = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            message["tool_calls"] = calls
        reason = _finish_reason(data.get("stop_reason"))
        if reason == "tool_calls" and answers and not calls:
            reason = "stop"  # the only tool called was the JSON answer's: to the client, a plain answer
        choice = {"index": 0, "message": message, "finish_reason": reason}
        payload = {"id": data.get("id", ""), "object": "chat.completion", "created": int(time.time()),
                   "model": target.public_model, "choices": [choice], "usage": _openai_usage(usage)}
        # The arguments count as generated text for a token estimate, as the text does.
        text = "".join([text, *(c["function"]["arguments"] for c in calls)]) if calls else text
        return Completion(payload=payload, usage=usage, text=text)

    def error_for(self, response: UpstreamReply) -> ProviderError:
        """Return the mapped ProviderError; Anthropic's 529 overloaded becomes a retryable 502."""
        return status_error(response)
