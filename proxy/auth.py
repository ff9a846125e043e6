"""Step one of the /v1 path: the presented key becomes a Caller, cache first."""

from __future__ import annotations

import asyncio

from django.http import HttpRequest

from accounts.keys import Caller, KeyRejected, lookup, lookup_local

from .db import db_step
from .errors import AuthenticationFailed, GatewayError, PermissionDenied

# One thread hop per request: the cache read and, when cold, the single key query.
alookup = db_step(lookup)

# Lookups in flight, by event loop and presented key (held in memory only while the lookup runs).
_pending: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[Caller]] = {}

# Messages never repeat what the client sent: a mistyped key is still somebody's secret.
_MESSAGES = {
    KeyRejected.MALFORMED: "Incorrect API key provided. Tollgate keys look like tg-<id>-<secret>.",
    KeyRejected.UNKNOWN: "Incorrect API key provided.",
    KeyRejected.REVOKED: "This API key has been revoked.",
    KeyRejected.EXPIRED: "This API key has expired.",
}


def presented_key(request: HttpRequest) -> str:
    """Return the key from `Authorization: Bearer` or `x-api-key`. Raises AuthenticationFailed."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthenticationFailed("Authorization must be 'Bearer <your Tollgate API key>'.")
        return value.strip()
    value = request.headers.get("x-api-key", "").strip()
    if not value:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' or in the x-api-key header."
        )
    return value


async def authenticate(request: HttpRequest) -> Caller:
    """Return the Caller for the request's key. Raises a 401/403 GatewayError."""
    key = presented_key(request)
    if len(key) > 200:
        raise AuthenticationFailed(_MESSAGES[KeyRejected.MALFORMED])
    try:
        # A key seen in the last few seconds is answered from memory, on the loop, with no thread hop.
        return lookup_local(key) or await shared_lookup(key)
    except KeyRejected as e:
        raise rejection(e.reason) from None


async def shared_lookup(key: str) -> Caller:
    """Return lookup(key), run once for all the requests that present the same key at the same moment.

    When the process's copy of a busy key expires, every request in flight misses it together; without
    this each would queue its own hop on the one database thread, behind any ledger write.
    """
    loop = asyncio.get_running_loop()
    pending = _pending.get((loop, key))
    if pending is None:
        pending = _pending[(loop, key)] = asyncio.ensure_future(alookup(key))
        pending.add_done_callback(lambda done: forget_pending(loop, key, done))
    # Shielded: a client that leaves must not cancel the lookup the others are waiting on.
    return await asyncio.shield(pending)


def forget_pending(loop: asyncio.AbstractEventLoop, key: str, done: asyncio.Future[Caller]) -> None:
    _pending.pop((loop, key), None)
    if not done.cancelled():
        done.exception()  # retrieved here too, in case every waiter has gone: no "never retrieved" warning


def rejection(reason: str) -> GatewayError:
    if reason == KeyRejected.TENANT_INACTIVE:
        return PermissionDenied("This key's tenant is deactivated. Ask your Tollgate operator.", code="tenant_inactive")
    return AuthenticationFailed(_MESSAGES[reason])
