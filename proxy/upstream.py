"""Step four's I/O: open a stream or fetch a completion from a provider, mapping every failure."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from . import dialects, providers
from .errors import ProviderError
from .providers import http
from .providers.base import ApiRequest, Chunk, Completion, StreamTranslator, Target, Upstream, UpstreamRequest


class HttpUpstream:
    """An upstream SSE answer being read line by line. Closing it early drops the connection at once."""

    def __init__(self, lines: AsyncIterator[str], translate: StreamTranslator, close: Callable[[], None]) -> None:
        self.lines, self.translate, self.close = lines, translate, close

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        finished = False
        async for line in self.lines:
            if not line.startswith("data:"):
                continue  # blank separators, `event:` names (their payload repeats the type), comments
            payload = line[5:].strip()
            if payload == "[DONE]":
                # Read to the end of the body: only a fully read answer returns its connection to the
                # pool, and a new connection per stream would cost a TLS handshake each time.
                async for _ in self.lines:
                    pass
                return
            for chunk in self.translate(payload):
                finished = finished or chunk.finished
                yield chunk
        if not finished:
            raise http.stream_error(ConnectionError())  # the body ended cleanly, but the answer never did

    async def aclose(self) -> None:
        self.close()
        finish = getattr(self.lines, "aclose", None)
        if finish is not None:
            await finish()  # finalise the reader now rather than whenever the collector gets to it


async def build(provider: Any, target: Target, body: ApiRequest) -> UpstreamRequest:
    """The provider's request; encoding a large body to JSON happens in a worker thread, off the event loop."""
    if body.is_large:
        return await asyncio.to_thread(provider.build_request, target, body)
    request: UpstreamRequest = provider.build_request(target, body)
    return request


async def provider_for(target: Target, body: ApiRequest) -> tuple[Any, ApiRequest, dialects.Dialect | None]:
    """The provider to ask, the body it gets, and the dialect to translate its answer back to (None: as it is)."""
    dialect = dialects.get(body.endpoint)
    if dialect is None:
        return providers.get(target.kind), body, None
    native = dialects.native(target, body.endpoint)
    if native is not None:
        return native, body, None
    if body.translated is None and body.is_large:  # translating megabytes of prompt would stall the loop
        await asyncio.to_thread(dialects.chat_form, body)
    chat = dialects.chat_form(body)
    if (refusal := chat.state.get("refusal")) is not None:
        raise refusal  # the request needs what only a provider speaking the dialect offers (e.g. a built-in tool)
    return providers.get(target.kind), chat, dialect


async def open_stream(target: Target, body: ApiRequest) -> Upstream:
    """Return the opened upstream stream. Raises ProviderError before any byte reaches the client."""
    provider, sent, dialect = await provider_for(target, body)
    if dialect is not None:
        return dialect.stream(body, await open_with(provider, target, sent))
    return await open_with(provider, target, body)


async def open_with(provider: Any, target: Target, body: ApiRequest) -> Upstream:
    if hasattr(provider, "open_stream"):
        return await provider.open_stream(target, body)
    # Opened inside the view, before the response starts, so an upstream 4xx/5xx keeps its status code.
    response = await http.send(await build(provider, target, body))
    if response.status >= 400:
        raise provider.error_for(await http.reply(response))
    # close() drops a half-read connection (stopping the upstream's work); a finished one goes back to the pool.
    return HttpUpstream(http.lines(response), provider.stream_translator(target, body), response.close)


async def complete(target: Target, body: ApiRequest) -> Completion:
    """Return the provider's whole answer. Raises ProviderError."""
    provider, sent, dialect = await provider_for(target, body)
    if dialect is not None:
        return dialect.completion(body, await complete_with(provider, target, sent))
    return await complete_with(provider, target, body)


async def complete_with(provider: Any, target: Target, body: ApiRequest) -> Completion:
    if hasattr(provider, "complete"):
        return await provider.complete(target, body)
    answer = await http.reply(await http.send(await build(provider, target, body)))
    if answer.status_code >= 400:
        raise provider.error_for(answer)
    try:
        data = json.loads(answer.content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProviderError("The provider sent an unreadable answer.", status=502, code="upstream_error", permanent=False)
    completion: Completion = provider.parse_response(target, body, data)
    if completion.payload is data:
        completion.raw = answer.content  # unchanged by the provider: no need to encode it again
    return completion
