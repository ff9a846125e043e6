"""The one place Tollgate talks HTTP to providers: a shared httpx client and the upstream error mapping."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
from django.conf import settings

from ..errors import ProviderError

LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=30.0)

def timeout() -> httpx.Timeout:
    # httpx's default of 5 s of silence would cut off a slow first token (long prompts, cold models);
    # connect and pool waits stay short so a dead upstream fails fast instead of hanging a request.
    return httpx.Timeout(
        connect=settings.TOLLGATE_UPSTREAM_CONNECT_TIMEOUT, read=settings.TOLLGATE_UPSTREAM_READ_TIMEOUT,
        write=30.0, pool=5.0,
    )


_pools: dict[asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, httpx.AsyncHTTPTransport]] = {}


def pool() -> tuple[httpx.AsyncClient, httpx.AsyncHTTPTransport]:
    """Return the running event loop's client and its transport (Django has no ASGI lifespan to build them in)."""
    loop = asyncio.get_running_loop()
    shared = _pools.get(loop)
    if shared is None or shared[0].is_closed:
        for stale in [other for other in _pools if other.is_closed()]:
            del _pools[stale]
        transport = httpx.AsyncHTTPTransport(limits=LIMITS)
        shared = _pools[loop] = (httpx.AsyncClient(transport=transport, timeout=timeout()), transport)
    return shared


def client() -> httpx.AsyncClient:
    """Return the shared client of the running event loop, which providers use to build requests."""
    return pool()[0]


async def send(request: httpx.Request) -> httpx.Response:
    """Send a request built by client() through its connection pool; the body is left unread.

    This skips the client's cookie jar, redirect and auth layers: providers never need them, they cost
    about a third of httpx's time per request, and a shared cookie jar would carry one tenant's
    upstream cookies into another tenant's requests.
    """
    response = await pool()[1].handle_async_request(request)
    response.request = request
    return response


_SAFE_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def upstream_code(response: httpx.Response) -> str | None:
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


def status_error(response: httpx.Response) -> ProviderError:
    """Map an upstream 4xx/5xx to the status the OpenAI SDKs expect. The body is never echoed."""
    status, code = response.status_code, upstream_code(response)
    if status in (400, 413, 422):
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
    if status == 429:
        return ProviderError(
            "The provider is rate limiting requests; try again shortly.",
            status=429, code=code or "upstream_rate_limited", permanent=False,
            retry_after=response.headers.get("retry-after"),
        )
    return ProviderError(
        f"The provider failed (HTTP {status}).", status=502, code="upstream_error", permanent=False
    )


def transport_error(error: httpx.HTTPError) -> ProviderError:
    """Map a connection failure or timeout; the message names no host, key or URL."""
    if isinstance(error, httpx.TimeoutException):
        return ProviderError(
            "The provider did not answer in time.", status=504, code="upstream_timeout", permanent=False,
            end_reason="timeout",
        )
    return ProviderError(
        "The provider could not be reached.", status=502, code="upstream_unreachable", permanent=False
    )
