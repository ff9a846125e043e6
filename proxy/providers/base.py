"""What every provider speaks: the request we forward, the chunks we stream back, the usage we record.

HTTP providers are pure translators (``build_request``, ``stream_translator``, ``parse_response``,
``error_for``); all I/O lives in ``providers/http.py`` and ``proxy/upstream.py``. A provider that
needs no HTTP (the built-in demo model) implements ``open_stream`` and ``complete`` itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ..errors import ProviderError

JSONDict = dict[str, Any]

CHAT, COMPLETIONS, EMBEDDINGS = "chat", "completions", "embeddings"
# Inbound dialects (proxy/dialects): sent natively to a provider that speaks them, else translated to CHAT and back.
MESSAGES, RESPONSES = "messages", "responses"
# Bodies larger than this are parsed, sized, journaled and re-encoded in worker threads, never on the event loop.
LARGE_BODY_BYTES = 256 * 1024


def encode_json(payload: JSONDict) -> bytes:
    """The payload as UTF-8 JSON for a provider. orjson encodes an 8 MB prompt in ~3 ms where json takes ~13 ms,
    holding the interpreter lock all along; the standard library takes what orjson refuses (integers past 64 bits)."""
    try:
        return orjson.dumps(payload)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(payload).encode()


@dataclass
class ApiRequest:
    """A validated /v1 request body. ``data`` is the client's JSON, forwarded as far as the provider allows."""

    endpoint: str  # CHAT, COMPLETIONS, EMBEDDINGS, or a dialect: MESSAGES, RESPONSES
    model: str
    data: JSONDict
    stream: bool = False
    include_usage: bool = False  # the client asked for stream_options.include_usage
    max_tokens: int | None = None
    size: int = 0  # bytes of the client's body
    # A dialect request's CHAT form, made once (proxy/dialects.chat_form) for sizing and for providers that need it.
    translated: ApiRequest | None = field(default=None, repr=False)
    state: JSONDict = field(default_factory=dict, repr=False)  # what a dialect keeps for the request (e.g. history)

    @property
    def is_chat(self) -> bool:
        """Chat-shaped: messages with roles (token estimates count each message's overhead)."""
        return self.endpoint not in (COMPLETIONS, EMBEDDINGS)

    @property
    def is_large(self) -> bool:
        return self.size > LARGE_BODY_BYTES

    def prompt_texts(self) -> list[str]:
        """The text the prompt is made of, for token estimates when a provider reports no usage."""
        if self.endpoint in (MESSAGES, RESPONSES):
            from .. import dialects  # the dialects import this module

            return dialects.chat_form(self).prompt_texts()
        if self.endpoint == CHAT:
            texts = []
            for message in self.data.get("messages", []):
                content = message.get("content") if isinstance(message, dict) else None
                if isinstance(content, str):
                    texts.append(content)
                elif isinstance(content, list):
                    # Only text parts carry text; proxy/parsing.py has checked it is a string, this guards other callers.
                    texts.extend(text for part in content if isinstance(part, dict)
                                 and isinstance(text := part.get("text"), str))
            return texts
        value = self.data.get("prompt" if self.endpoint == COMPLETIONS else "input", "")
        if isinstance(value, str):
            return [value]
        return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


@dataclass(frozen=True)
class CachePolicy:
    """A route's response cache settings (see proxy/response_cache.py); ``enabled`` False leaves it to the key."""

    enabled: bool = False
    ttl_seconds: int = 300
    shared: bool = False  # one entry for every tenant
    per_user: bool = False  # never cache a request with a `user` field
    sampled: bool = False  # also cache n > 1 with a temperature above 0
    free: bool = True  # a hit costs nothing; otherwise the full price of the cached answer's tokens


NO_CACHE = CachePolicy()


@dataclass(frozen=True)
class Target:
    """One deployment chosen for one request: where to send it and how."""

    public_model: str
    deployment_id: int
    provider_name: str
    kind: str
    base_url: str
    upstream_model: str
    api_key: str = field(repr=False, default="")
    stream_usage: bool = True  # the upstream honours stream_options.include_usage
    options: JSONDict = field(default_factory=dict)  # preset quirks, e.g. parameter renames
    cache: CachePolicy = NO_CACHE  # the route's response cache settings


@dataclass
class Usage:
    prompt_tokens: int = 0  # every prompt token, cached and cache writes included
    completion_tokens: int = 0
    cached_tokens: int = 0  # read from the provider's prompt cache
    cache_write_tokens: int = 0  # written to the provider's prompt cache (Anthropic prices them above input)


@dataclass
class Chunk:
    """One event for the client. ``data`` is the JSON payload of an SSE ``data:`` line, or None to send nothing."""

    data: bytes | None
    text: str = ""  # delta text, kept for token estimates
    usage: Usage | None = None
    usage_only: bool = False  # a `choices: []` usage chunk, stripped unless the client asked for usage
    finished: bool = False  # the upstream said the answer is complete
    event: str | None = None  # the SSE event name, for dialects whose streams name their events (Messages, Responses)
    parsed: JSONDict | None = field(default=None, repr=False)  # ``data`` as its provider parsed it, when it did
    more: bool = False  # another event follows at once: written to the client together with it, as one write


@dataclass
class Completion:
    """A non-streamed answer, already in the OpenAI shape."""

    payload: JSONDict
    usage: Usage | None
    text: str = ""
    raw: bytes | None = None  # the upstream's JSON as received, sent on unchanged when the shape already fits


@dataclass(frozen=True)
class UpstreamRequest:
    """What to send a provider, independent of the HTTP library behind providers/http.py."""

    url: str
    body: bytes
    headers: dict[str, str] = field(repr=False, default_factory=dict)  # carries the provider's key
    method: str = "POST"

    @classmethod
    def post_json(cls, url: str, payload: JSONDict, headers: dict[str, str]) -> UpstreamRequest:
        return cls(url=url, body=encode_json(payload), headers={"Content-Type": "application/json", **headers})

    def json(self) -> JSONDict:
        data: JSONDict = json.loads(self.body)
        return data


@dataclass(frozen=True)
class UpstreamReply:
    """A provider's complete error answer, read into memory (it is never passed on)."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes


class Upstream(Protocol):
    """An opened stream: iterate chunks, then close. Closing early drops the upstream connection."""

    def __aiter__(self) -> AsyncIterator[Chunk]: ...
    async def aclose(self) -> None: ...


StreamTranslator = Callable[[str], list[Chunk]]


class HttpProvider(Protocol):
    name: str

    def build_request(self, target: Target, body: ApiRequest) -> UpstreamRequest:
        """Return the upstream request for the body. Raises GatewayError if the provider cannot serve it."""
        ...

    def stream_translator(self, target: Target, body: ApiRequest) -> StreamTranslator:
        """Return a function from one upstream SSE `data:` payload to the chunks it yields."""
        ...

    def parse_response(self, target: Target, body: ApiRequest, data: JSONDict) -> Completion:
        """Return the OpenAI-shaped answer for a non-streamed upstream response."""
        ...

    def error_for(self, response: UpstreamReply) -> ProviderError:
        """Return the error for an upstream 4xx/5xx, without its body or credentials."""
        ...
