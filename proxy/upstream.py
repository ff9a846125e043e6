"""Step four's I/O: open a stream or fetch a completion from a provider, mapping every failure."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from . import providers
from .errors import ProviderError
from .providers.base import ApiRequest, Chunk, Completion, StreamTranslator, Target, Upstream
from .providers.http import client, send, transport_error


class HttpUpstream:
    """An upstream SSE response being read line by line. Closing it drops the connection at once."""

    def __init__(self, response: httpx.Response, translate: StreamTranslator) -> None:
        self.response, self.translate = response, translate

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        finished = False
        try:
            lines = self.response.aiter_lines()
            async for line in lines:
                if not line.startswith("data:"):
                    continue  # blank separators, `event:` names (their payload repeats the type), comments
                payload = line[5:].strip()
                if payload == "[DONE]":
                    # Read to the end of the body: only a fully read response returns its connection
                    # to the pool, and a new connection per stream would cost a TLS handshake each time.
                    async for _ in lines:
                        pass
                    return
                for chunk in self.translate(payload):
                    finished = finished or chunk.finished
                    yield chunk
        except httpx.TimeoutException:
            raise ProviderError(
                "The provider stopped sending in the middle of the answer.", status=504, code="upstream_timeout",
                permanent=False, end_reason="timeout",
            ) from None
        except httpx.HTTPError:
            raise cut() from None
        if not finished:
            raise cut()  # the connection closed cleanly, but the answer never said it was complete

    async def aclose(self) -> None:
        await self.response.aclose()


def cut() -> ProviderError:
    return ProviderError(
        "The provider closed the connection in the middle of the answer.", status=502, code="upstream_cut",
        permanent=False, end_reason="upstream_cut",
    )


async def open_stream(target: Target, body: ApiRequest) -> Upstream:
    """Return the opened upstream stream. Raises ProviderError before any byte reaches the client."""
    provider = providers.get(target.kind)
    if hasattr(provider, "open_stream"):
        return await provider.open_stream(target, body)
    http = client()
    request = provider.build_request(http, target, body)
    try:
        # Open inside the view, before the response starts, so an upstream 4xx/5xx keeps its status code.
        response = await send(request)
    except httpx.HTTPError as e:
        raise transport_error(e) from None
    if response.status_code >= 400:
        try:
            await response.aread()
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
        raise provider.error_for(response)
    return HttpUpstream(response, provider.stream_translator(target, body))


async def complete(target: Target, body: ApiRequest) -> Completion:
    """Return the provider's whole answer. Raises ProviderError."""
    provider = providers.get(target.kind)
    if hasattr(provider, "complete"):
        return await provider.complete(target, body)
    http = client()
    try:
        response = await send(provider.build_request(http, target, body))
        await response.aread()
    except httpx.HTTPError as e:
        raise transport_error(e) from None
    if response.status_code >= 400:
        raise provider.error_for(response)
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProviderError("The provider sent an unreadable answer.", status=502, code="upstream_error", permanent=False)
    completion: Completion = provider.parse_response(target, body, data)
    if completion.payload is data:
        completion.raw = response.content  # unchanged by the provider: no need to encode it again
    return completion
