"""OpenAI-compatible upstreams: one translator, and each vendor's quirks kept as data.

A preset gives the default base URL and what differs from OpenAI's own API. Add a vendor by adding a
row; a test loads every row.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from ..errors import GatewayError, ProviderError
from .base import (
    CHAT, COMPLETIONS, EMBEDDINGS, ApiRequest, Chunk, Completion, JSONDict, StreamTranslator, Target, UpstreamReply,
    UpstreamRequest, Usage, encode_json,
)
from .http import status_error

# stream_usage: the upstream honours stream_options.include_usage (else usage is estimated or read
# from whatever chunk carries it). renames: parameters the upstream spells differently. responses: the upstream
# also serves OpenAI's Responses API at {base_url}/responses (relayed natively, proxy/dialects). usage_from_total:
# the upstream leaves some billed output (thinking) out of completion_tokens but counts it in total_tokens.
PRESETS: dict[str, dict[str, Any]] = {
    # https://platform.openai.com/docs/api-reference/chat/create
    "openai": {"base_url": "https://api.openai.com/v1", "stream_usage": True, "responses": True},
    # https://ai.google.dev/gemini-api/docs/openai : usage comes on the last content chunk (with finish_reason),
    # cached prompt tokens in prompt_tokens_details. A thinking model's thought tokens are billed as output and
    # counted in total_tokens, but completion_tokens counts only the visible answer (reported upstream, e.g.
    # https://github.com/mozilla-ai/any-llm/issues/1290): the ledger bills total_tokens - prompt_tokens.
    "gemini": {
        "base_url": "https://generativelanguage.googleapis.com/v1beta/openai", "stream_usage": True,
        "usage_from_total": True,
    },
    # https://openrouter.ai/docs/api-reference/overview
    "openrouter": {"base_url": "https://openrouter.ai/api/v1", "stream_usage": True},
    # https://api-docs.deepseek.com/api/create-chat-completion
    "deepseek": {"base_url": "https://api.deepseek.com/v1", "stream_usage": True},
    # https://console.groq.com/docs/openai
    "groq": {"base_url": "https://api.groq.com/openai/v1", "stream_usage": True},
    # https://docs.together.ai/docs/openai-api-compatibility
    "together": {"base_url": "https://api.together.xyz/v1", "stream_usage": True},
    # https://docs.mistral.ai/api/ : rejects stream_options, and puts usage on the last chunk by itself.
    "mistral": {
        "base_url": "https://api.mistral.ai/v1", "stream_usage": False,
        "renames": {"max_completion_tokens": "max_tokens"},
    },
    # https://github.com/ollama/ollama/blob/main/docs/openai.md
    "ollama": {"base_url": "http://127.0.0.1:11434/v1", "stream_usage": True},
    # https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html
    "vllm": {"base_url": "http://127.0.0.1:8000/v1", "stream_usage": True},
    # https://lmstudio.ai/docs/app/api/endpoints/openai : no usage in streams.
    "lmstudio": {"base_url": "http://127.0.0.1:1234/v1", "stream_usage": False},
    "custom": {"base_url": "", "stream_usage": True},
}

PATHS = {CHAT: "/chat/completions", COMPLETIONS: "/completions", EMBEDDINGS: "/embeddings"}


def parse_usage(raw: object, *, from_total: bool = False) -> Usage | None:
    """The usage of an OpenAI usage object; ``from_total``: output is whatever total_tokens has beyond the prompt."""
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details") or {}
    prompt, completion = int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0)
    if from_total:
        # max(): right both before and after such an upstream starts counting thoughts in completion_tokens.
        completion = max(completion, int(raw.get("total_tokens") or 0) - prompt)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
    )


def choice_text(choice: JSONDict) -> str:
    for holder in (choice.get("delta"), choice.get("message")):
        if isinstance(holder, dict) and isinstance(holder.get("content"), str):
            return holder["content"]
    text = choice.get("text")
    return text if isinstance(text, str) else ""


class OpenAICompatibleProvider:
    name = "openai_compatible"

    def build_request(self, target: Target, body: ApiRequest) -> UpstreamRequest:
        """Return the upstream request: the client's body with the upstream model and our usage options."""
        if body.endpoint not in PATHS:
            raise GatewayError(f"{body.endpoint} is not supported by this provider", code="unsupported_endpoint")
        headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        url = target.base_url.rstrip("/") + PATHS[body.endpoint]
        return UpstreamRequest.post_json(url, self.payload(target, body), headers)

    def payload(self, target: Target, body: ApiRequest) -> JSONDict:
        """Return the client's body with the upstream model, the preset's renames and our stream usage option."""
        payload = dict(body.data)
        payload["model"] = target.upstream_model
        for ours, theirs in target.options.get("renames", {}).items():
            if ours in payload:
                payload[theirs] = payload.pop(ours)
        if body.stream and target.stream_usage:
            # Always ask for usage so the ledger is exact; the chunk is stripped if the client did not ask.
            options = payload.get("stream_options") if isinstance(payload.get("stream_options"), dict) else {}
            payload["stream_options"] = {**options, "include_usage": True}
        else:
            payload.pop("stream_options", None)
        return payload

    def stream_translator(self, target: Target, body: ApiRequest) -> StreamTranslator:
        """Return a translator that forwards each upstream payload, naming the client's model, and reads its usage."""
        return ChunkTranslator(target)

    def parse_response(self, target: Target, body: ApiRequest, data: JSONDict) -> Completion:
        """Return the upstream's answer with the client's model name (the same dict when it already has it)."""
        choices = data.get("choices") if isinstance(data.get("choices"), list) else []
        text = "".join(choice_text(c) for c in choices if isinstance(c, dict))
        usage = parse_usage(data.get("usage"), from_total=bool(target.options.get("usage_from_total")))
        if isinstance(data.get("model"), str) and data["model"] != target.public_model:
            data = {**data, "model": target.public_model}  # a new dict: the upstream's bytes are not sent unchanged
        return Completion(payload=data, usage=usage, text=text)

    def error_for(self, response: UpstreamReply) -> ProviderError:
        """Return the mapped error for an upstream 4xx/5xx."""
        if response.content.lstrip()[:1] == b"[":
            # Google's endpoints wrap the error in a list, [{"error": {...}}]: read the one inside.
            try:
                first = json.loads(response.content)[0]
            except (ValueError, IndexError, KeyError):
                first = None
            if isinstance(first, dict):
                response = UpstreamReply(response.status_code, response.headers, json.dumps(first).encode())
        return status_error(response)


class ModelName:
    """Puts the client's model name in upstream chunks. Usually one str.replace of the exact `"model":"<name>"` field
    as the upstream wrote it; a chunk where that is not found (an escaped name, another spacing) is encoded again."""

    def __init__(self, public: str) -> None:
        self.public = public
        self.field = '"model":' + json.dumps(public, ensure_ascii=False)
        self.upstream: str | None = None  # the last name the upstream used
        self.needle: str | None = None  # that name's field as written in its chunks, once found

    def apply(self, payload: str, data: JSONDict) -> str:
        name = data.get("model")
        if not isinstance(name, str) or name == self.public:
            return payload  # already right, or no name to correct (the pass-through path: nothing allocated)
        if name != self.upstream:
            self.upstream = name
            self.needle = next((n for n in _fields(name) if n in payload), None)
        # A JSON string cannot hold an unescaped quote, so the needle matches the field itself, never text in it.
        if self.needle is not None and self.needle in payload:
            return payload.replace(self.needle, self.field, 1)
        return encode_json({**data, "model": self.public}).decode()


def _fields(name: str) -> tuple[str, ...]:
    """How JSON encoders commonly write a top-level "model" field holding this name."""
    values = dict.fromkeys((json.dumps(name, ensure_ascii=False), json.dumps(name)))
    return tuple(f'"model":{sep}{value}' for value in values for sep in ("", " "))


class ChunkTranslator:
    """Reads one upstream stream's chunks: text, usage, the finish; forwards them with the client's model name."""

    def __init__(self, target: Target) -> None:
        self.name = ModelName(target.public_model)
        self.from_total = bool(target.options.get("usage_from_total"))

    def __call__(self, payload: str) -> list[Chunk]:
        try:
            data = loads(payload)
        except ValueError:
            raise ProviderError("The provider sent a malformed event.", status=502, code="upstream_error",
                                permanent=False) from None
        if not isinstance(data, dict):
            return []
        if "error" in data:
            raise ProviderError("The provider failed mid-stream.", status=502, code="upstream_error", permanent=False)
        choices = [c for c in data.get("choices") or [] if isinstance(c, dict)]
        usage = parse_usage(data.get("usage"), from_total=self.from_total)
        return [
            Chunk(
                data=self.name.apply(payload, data).encode(),
                text="".join(choice_text(c) for c in choices),
                usage=usage,
                usage_only=not choices and usage is not None,
                finished=any(c.get("finish_reason") for c in choices),
                parsed=data,  # a dialect translating the chunk (proxy/dialects) need not parse it again
            )
        ]


def loads(payload: str) -> Any:
    """One chunk's JSON: orjson, about three times faster than json on a chunk; json for what orjson refuses
    (NaN, integers past 64 bits), so a chunk reads as it always did. Raises ValueError."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)
