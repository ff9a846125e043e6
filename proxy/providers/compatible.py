"""OpenAI-compatible upstreams: one translator, and each vendor's quirks kept as data.

A preset gives the default base URL and what differs from OpenAI's own API. Add a vendor by adding a
row; a test loads every row.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import GatewayError, ProviderError
from .base import (
    CHAT, COMPLETIONS, EMBEDDINGS, ApiRequest, Chunk, Completion, JSONDict, StreamTranslator, Target, UpstreamReply,
    UpstreamRequest, Usage,
)
from .http import status_error

# stream_usage: the upstream honours stream_options.include_usage (else usage is estimated or read
# from whatever chunk carries it). renames: parameters the upstream spells differently.
PRESETS: dict[str, dict[str, Any]] = {
    # https://platform.openai.com/docs/api-reference/chat/create
    "openai": {"base_url": "https://api.openai.com/v1", "stream_usage": True},
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

_PATHS = {CHAT: "/chat/completions", COMPLETIONS: "/completions", EMBEDDINGS: "/embeddings"}


def parse_usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
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
        headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        if body.endpoint not in _PATHS:
            raise GatewayError(f"{body.endpoint} is not supported by this provider", code="unsupported_endpoint")
        return UpstreamRequest.post_json(target.base_url.rstrip("/") + _PATHS[body.endpoint], payload, headers)

    def stream_translator(self, target: Target, body: ApiRequest) -> StreamTranslator:
        """Return a translator that forwards each upstream payload unchanged and reads its usage."""
        return translate_chunk

    def parse_response(self, target: Target, body: ApiRequest, data: JSONDict) -> Completion:
        """Return the upstream's answer as it is, with its usage read out."""
        choices = data.get("choices") if isinstance(data.get("choices"), list) else []
        text = "".join(choice_text(c) for c in choices if isinstance(c, dict))
        return Completion(payload=data, usage=parse_usage(data.get("usage")), text=text)

    def error_for(self, response: UpstreamReply) -> ProviderError:
        """Return the mapped error for an upstream 4xx/5xx."""
        return status_error(response)


def translate_chunk(payload: str) -> list[Chunk]:
    try:
        data = json.loads(payload)
    except ValueError:
        raise ProviderError("The provider sent a malformed event.", status=502, code="upstream_error", permanent=False)
    if not isinstance(data, dict):
        return []
    if "error" in data:
        raise ProviderError("The provider failed mid-stream.", status=502, code="upstream_error", permanent=False)
    choices = [c for c in data.get("choices") or [] if isinstance(c, dict)]
    usage = parse_usage(data.get("usage"))
    return [
        Chunk(
            data=payload.encode(),
            text="".join(choice_text(c) for c in choices),
            usage=usage,
            usage_only=not choices and usage is not None,
            finished=any(c.get("finish_reason") for c in choices),
        )
    ]
