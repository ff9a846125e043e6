"""The one place Tollgate talks HTTP to providers: a shared aiohttp session and the upstream error mapping.

aiohttp rather than httpx: with 16 streams opened at once, a bare httpx forwarder added ~30 ms to the time to
first byte on our benchmark machine and a bare aiohttp forwarder ~3 ms (httpcore's pool re-checks every
idle connection with a syscall for each request it places).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import aiohttp
from django.conf import settings

from .. import traceparent
from ..errors import ProviderError
from .base import UpstreamReply, UpstreamRequest

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
MAX_LINE = 16 * 1024 * 1024  # one SSE line; anything longer is a broken upstream


def timeout() -> aiohttp.ClientTimeout:
    # A slow first token is normal (long prompts, cold models), so reads wait up to two minutes by
    # default; connecting (and waiting for a pooled connection) stays short, so a dead upstream fails fast.
    connect = settings.TOLLGATE_UPSTREAM_CONNECT_TIMEOUT
    return aiohttp.ClientTimeout(total=None, connect=connect + 5, sock_connect=connect,
                                 sock_read=settings.TOLLGATE_UPSTREAM_READ_TIMEOUT)


def session() -> aiohttp.ClientSession:
    """Return the shared session of the running event loop (Django has no ASGI lifespan to build it in)."""
    loop = asyncio.get_running_loop()
    shared = _sessions.get(loop)
    if shared is None or shared.closed:
        for stale in [other for other in _sessions if other.is_closed()]:
            del _sessions[stale]
        connector = aiohttp.TCPConnector(limit=512, limit_per_host=256, keepalive_timeout=30)
        # No cookie jar: one tenant's upstream cookies must never ride along with another tenant's request.
        shared = _sessions[loop] = aiohttp.ClientSession(
            connector=connector, timeout=timeout(), cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True,
        )
    return shared


async def send(request: UpstreamRequest) -> aiohttp.ClientResponse:
    """Send the request; the body is left unread. Raises ProviderError for connection failures and timeouts."""
    headers = request.headers
    if (parent := traceparent.upstream.get()) is not None:  # the client's trace, or Tollgate's upstream span
        headers = {**headers, "traceparent": parent}
    try:
        return await session().request(request.method, request.url, data=request.body, headers=headers,
                                       allow_redirects=False)
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise transport_error(e) from None


async def reply(response: aiohttp.ClientResponse) -> UpstreamReply:
    """Read a whole answer (an error, or a non-streamed completion) and release the connection."""
    try:
        content = await response.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise transport_error(e) from None
    finally:
        response.release()
    return UpstreamReply(status_code=response.status, headers=response.headers, content=content)


async def lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """Yield the body's lines as they arrive. Raises ProviderError if the body breaks off or stalls."""
    buffer = b""
    try:
        async for piece in response.content.iter_any():
            buffer += piece
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                yield line.rstrip(b"\r").decode("utf-8", errors="replace")
            if len(buffer) > MAX_LINE:
                raise ProviderError("The provider sent an oversized event.", status=502, code="upstream_error",
                                    permanent=False)
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise stream_error(e) from None
    if buffer:
        yield buffer.rstrip(b"\r").decode("utf-8", errors="replace")


async def pieces(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Yield the body's bytes as they arrive, for framings other than SSE lines (Bedrock's event stream).
    Raises ProviderError if the body breaks off or stalls."""
    try:
        async for piece in response.content.iter_any():
            yield piece
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise stream_error(e) from None


_SAFE_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def upstream_code(response: UpstreamReply) -> str | None:
    """The upstream's short error code (e.g. context_length_exceeded) if it is a plain identifier.

    Only this enumerated token is passed on: upstream messages can quote prompts or masked credentials.
    """
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        return None
    if isinstance(error, dict):
        for candidate in (error.get("code"), error.get("type")):
            if isinstance(candidate, str) and _SAFE_CODE.fullmatch(candidate):
                return candidate
    return None


def status_error(response: UpstreamReply) -> ProviderError:
    """Map an upstream 4xx/5xx to the status the OpenAI SDKs expect. The body is never echoed."""
    status, code = response.status_code, upstream_code(response)
    if status in (400, 413, 422):
        if code != CONTEXT_WINDOW and too_long(response):
            code = CONTEXT_WINDOW  # one code for every provider's way of saying it, so the context fallbacks apply
        return ProviderError(
            f"The provider rejected the request as invalid (HTTP {status}).",
            status=400, code=code or "upstream_bad_request", permanent=True,
        )
    if status in (401, 403):
        return ProviderError(
            "The provider refused Tollgate's credentials. Ask your Tollgate operator to check the provider settings.",
            status=502, code="upstream_auth_failed", permanent=False,
        )
    if status == 404:
        return ProviderError(
            "The provider does not know the configured model. Ask your Tollgate operator to check the route.",
            status=502, code="upstream_model_not_found", permanent=False,
        )
    after, after_ms = retry_hints(response)
    if status == 429:
        return ProviderError(
            "The provider is rate limiting requests; try again shortly.",
            status=429, code=code or "upstream_rate_limited", permanent=False, retry_after=after, retry_after_ms=after_ms,
        )
    return ProviderError(
        f"The provider failed (HTTP {status}).", status=502, code="upstream_error", permanent=False,
        retry_after=after, retry_after_ms=after_ms,
    )


CONTEXT_WINDOW = "context_length_exceeded"
# How providers say a prompt does not fit the model: OpenAI and most compatible servers send the code above;
# Anthropic sends "prompt is too long: N tokens > M maximum" (https://docs.anthropic.com/en/api/errors), others
# variations of these. Only matched, never passed on: the message can quote the prompt.
# Gemini: "The input token count (N) exceeds the maximum number of tokens allowed (M)."
_TOO_LONG = re.compile(r"prompt is too long|input is too long|context.length|context.window|maximum context|"
                       r"too many (input )?tokens|exceeds the maximum number of tokens", re.IGNORECASE)


def too_long(response: UpstreamReply) -> bool:
    """Whether an upstream 4xx says the prompt is longer than the model's context window."""
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        return False
    message = error.get("message") if isinstance(error, dict) else error
    return isinstance(message, str) and _TOO_LONG.search(message[:1000]) is not None


_SECONDS = re.compile(r"\d{1,9}(\.\d{1,6})?")
_HTTP_DATE = re.compile(r"[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT")


def retry_hints(response: UpstreamReply) -> tuple[str | None, str | None]:
    """The upstream's Retry-After (seconds or an HTTP date) and retry-after-ms headers, each None unless well formed:
    they are passed on to clients, so nothing else is."""
    after, after_ms = response.headers.get("retry-after", "").strip(), response.headers.get("retry-after-ms", "").strip()
    return (after if _SECONDS.fullmatch(after) or _HTTP_DATE.fullmatch(after) else None,
            after_ms if _SECONDS.fullmatch(after_ms) else None)


def transport_error(error: BaseException) -> ProviderError:
    """Map a connection failure or timeout before the answer started; the message names no host, key or URL."""
    if isinstance(error, asyncio.TimeoutError):
        return ProviderError(
            "The provider did not answer in time.", status=504, code="upstream_timeout", permanent=False,
            end_reason="timeout",
        )
    return ProviderError(
        "The provider could not be reached.", status=502, code="upstream_unreachable", permanent=False
    )


def stream_error(error: BaseException) -> ProviderError:
    """Map a failure in the middle of an answer: a stall is a timeout, anything else a cut."""
    if isinstance(error, asyncio.TimeoutError):
        return ProviderError(
            "The provider stopped sending in the middle of the answer.", status=504, code="upstream_timeout",
            permanent=False, end_reason="timeout",
        )
    return ProviderError(
        "The provider closed the connection in the middle of the answer.", status=502, code="upstream_cut",
        permanent=False, end_reason="upstream_cut",
    )
