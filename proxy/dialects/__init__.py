"""Inbound dialects: the APIs Tollgate serves besides Chat Completions (Anthropic's Messages, OpenAI's Responses).

A dialect request keeps the client's own body (``ApiRequest.endpoint`` is MESSAGES or RESPONSES) and goes through the
same five steps as a chat request. A provider that speaks the dialect gets the body natively (``native``); any other
gets its CHAT form (``chat_form``) and the answer is translated back (``Dialect.completion`` / ``Dialect.stream``).
Sizing, token estimates and limits read the CHAT form, so a dialect request is held, limited and billed exactly as
the same chat request would be.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from django.http import HttpResponse
from django.utils.module_loading import import_string

from ..providers.base import MESSAGES, RESPONSES, ApiRequest, Completion, JSONDict, Target, Upstream

if TYPE_CHECKING:
    from accounts.keys import Caller

    from ..errors import GatewayError

DIALECTS = {MESSAGES: "proxy.dialects.messages.DIALECT", RESPONSES: "proxy.dialects.responses.DIALECT"}

# (provider kind, dialect) -> the provider that takes the dialect's body as it is. A compatible upstream speaks
# Responses only when its preset says so (options["responses"]): most OpenAI-compatible servers do not.
NATIVE = {
    ("anthropic", MESSAGES): "proxy.providers.anthropic_native.MessagesProvider",
    ("openai_compatible", RESPONSES): "proxy.providers.responses_native.ResponsesProvider",
    ("azure", RESPONSES): "proxy.providers.responses_native.ResponsesProvider",
}
NEEDS_OPTION = {RESPONSES: "responses"}


class Dialect(Protocol):
    endpoint: str
    done: bytes  # what ends a successful stream after its last event (b"": the last event says so itself)

    def parse(self, data: JSONDict) -> ApiRequest:
        """The validated request. Raises a 4xx GatewayError naming the bad parameter."""
        ...

    async def prepare(self, body: ApiRequest, caller: Caller) -> None:
        """Anything the request needs from storage before routing (a conversation's history). May raise."""
        ...

    def to_chat(self, body: ApiRequest) -> ApiRequest:
        """The CHAT request that asks the same of a provider that does not speak the dialect."""
        ...

    def completion(self, body: ApiRequest, completion: Completion) -> Completion:
        """A chat answer (OpenAI chat.completion) in the dialect's shape; usage unchanged."""
        ...

    def stream(self, body: ApiRequest, upstream: Upstream) -> Upstream:
        """Chat chunks in, the dialect's events out (``Chunk.event`` named); usage carried on the chunks."""
        ...

    # Optional: ``async def finish(self, body: ApiRequest, completion: Completion) -> None``, awaited before a whole
    # (non-streamed) answer goes out, for what needs I/O (the Responses dialect stores the response there).

    def error_response(self, error: GatewayError) -> HttpResponse:
        """The dialect's error envelope and status for the error."""
        ...

    def error_event(self, body: ApiRequest | None, error: GatewayError) -> bytes:
        """The in-band SSE error that ends a stream whose headers are gone."""
        ...


@cache
def get_dialect(endpoint: str) -> Dialect:
    dialect: Dialect = import_string(DIALECTS[endpoint])
    return dialect


def get(endpoint: str) -> Dialect | None:
    """The dialect of an endpoint; None for CHAT, COMPLETIONS and EMBEDDINGS (one dict lookup on their path)."""
    return get_dialect(endpoint) if endpoint in DIALECTS else None


def chat_form(body: ApiRequest) -> ApiRequest:
    """The body's CHAT form, made once per request."""
    if body.translated is None:
        chat = get_dialect(body.endpoint).to_chat(body)
        chat.size = body.size
        body.translated = chat
    return body.translated


@cache
def _native_provider(path: str) -> Any:
    return import_string(path)()


def native(target: Target, endpoint: str) -> Any | None:
    """The provider that takes this dialect's body as it is at this target, or None: translate to chat."""
    path = NATIVE.get((target.kind, endpoint))
    if path is None:
        return None
    option = NEEDS_OPTION.get(endpoint)
    if option is not None and not target.options.get(option):
        return None
    return _native_provider(path)
