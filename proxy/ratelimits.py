"""Rate limits per key and per tenant: requests and tokens per minute, and requests in flight.

Minutes are fixed windows (as OpenAI's limits reset). With Redis configured one Lua script checks and
counts every limit of a request at once, so the limits hold across all server processes; without Redis
the counters live in this process, which is exact for the single-process embedded setup.

django-ratelimit is not used here: its counters are one cache call per rate, in a thread, and cannot
check a token count and a concurrency slot in the same atomic step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from accounts.keys import Limits
from billing import keyspace, scripts
from billing.scripts import Call

WINDOW = 60


@dataclass(frozen=True)
class Scope:
    name: str  # "key" or "tenant", as told to the client
    ident: str  # key prefix or tenant slug: the caller's own, safe to name
    limits: Limits
    tenant_id: int  # whose hash tag the scope's Redis keys carry (billing/keyspace.py)


@dataclass
class Verdict:
    admitted: bool
    scope: Scope | None = None  # the scope that refused
    kind: str = ""  # requests | tokens | concurrent
    limit: int = 0
    retry_after: int = 0
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None
    reset_seconds: int = 0

    def as_json(self) -> dict[str, object]:
        if self.admitted:
            return {"remaining_requests": self.remaining_requests, "remaining_tokens": self.remaining_tokens}
        assert self.scope is not None
        return {"scope": self.scope.name, "limit": self.kind, "value": self.limit}


def _lim(value: int | None) -> int:
    return -1 if value is None else value


# KEYS per scope: requests counter, tokens counter, in-flight set. ARGV: now, lease expiry, request id,
# tokens, window ttl, then per scope: requests limit, tokens limit, in-flight limit (-1: none).
CHECK = """
local now, tokens = tonumber(ARGV[1]), tonumber(ARGV[4])
local scopes = #KEYS / 3
local remaining = {}
for i = 0, scopes - 1 do
  local rl, tl, cl = tonumber(ARGV[6 + 3 * i]), tonumber(ARGV[7 + 3 * i]), tonumber(ARGV[8 + 3 * i])
  local used = tonumber(redis.call('GET', KEYS[1 + 3 * i]) or '0')
  if rl >= 0 and used + 1 > rl then return {0, i, 1, rl} end
  local used_tokens = tonumber(redis.call('GET', KEYS[2 + 3 * i]) or '0')
  if tl >= 0 and used_tokens + tokens > tl then return {0, i, 2, tl} end
  if cl >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 + 3 * i], '-inf', now)
    if redis.call('ZCARD', KEYS[3 + 3 * i]) + 1 > cl then return {0, i, 3, cl} end
  end
  remaining[#remaining + 1] = rl >= 0 and rl - used - 1 or -1
  remaining[#remaining + 1] = tl >= 0 and tl - used_tokens - tokens or -1
end
for i = 0, scopes - 1 do
  if tonumber(ARGV[6 + 3 * i]) >= 0 then
    redis.call('INCR', KEYS[1 + 3 * i]); redis.call('EXPIRE', KEYS[1 + 3 * i], ARGV[5])
  end
  if tonumber(ARGV[7 + 3 * i]) >= 0 then
    redis.call('INCRBY', KEYS[2 + 3 * i], tokens); redis.call('EXPIRE', KEYS[2 + 3 * i], ARGV[5])
  end
  if tonumber(ARGV[8 + 3 * i]) >= 0 then
    redis.call('ZADD', KEYS[3 + 3 * i], ARGV[2], ARGV[3]); redis.call('EXPIRE', KEYS[3 + 3 * i], ARGV[5] * 30)
  end
end
return {1, remaining}
"""

KINDS = {1: "requests", 2: "tokens", 3: "concurrent"}


def keys_for(scope: Scope, window: int) -> list[str]:
    base = keyspace.rate(scope.tenant_id, scope.name, scope.ident)
    return [f"{base}:r:{window}", f"{base}:t:{window}", f"{base}:c"]


RELEASE = scripts.ZREM_ALL  # KEYS: the in-flight sets of the scopes; ARGV: the request id

# KEYS: in-flight sets; ARGV: the new lease expiry, then per key the request id holding a slot there.
RENEW = """
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', ARGV[1], ARGV[i + 1]) end
return #KEYS
"""


class RedisLimiter:
    def __init__(self, url: str) -> None:
        self.url = url

    def check(self, request_id: str, scopes: list[Scope], tokens: int) -> tuple[Call, float]:
        """The script call that checks and counts every limit at once, and the time it was made for."""
        now = time.time()
        window = int(now // WINDOW)
        keys = [k for scope in scopes for k in keys_for(scope, window)]
        lease = now + settings.TOLLGATE_RESERVATION_LEASE_SECONDS
        args: list[Any] = [now, lease, request_id, tokens, WINDOW * 2]
        for scope in scopes:
            args += [_lim(scope.limits.requests_per_minute), _lim(scope.limits.tokens_per_minute),
                     _lim(scope.limits.max_concurrent)]
        return Call(CHECK, keys, args), now

    async def acquire(self, request_id: str, scopes: list[Scope], tokens: int) -> Verdict:
        call, now = self.check(request_id, scopes, tokens)
        [result] = await scripts.run(self.url, [call])
        return verdict(result, scopes, now)

    def slot_keys(self, scopes: list[Scope]) -> list[str]:
        """The in-flight sets a request of these scopes holds a slot in (kept in the journal for recovery)."""
        return [keys_for(s, 0)[2] for s in scopes if s.limits.max_concurrent is not None]

    def release_call(self, request_id: str, scopes: list[Scope]) -> Call | None:
        slots = self.slot_keys(scopes)
        return Call(RELEASE, slots, [request_id]) if slots else None

    def renewal(self, slots: list[tuple[str, str]], expires_at: float) -> list[Call]:
        """The calls (one per tenant: a script stays in one slot) that move the lease of these (in-flight set,
        request id) slots to ``expires_at``."""
        by_tenant: dict[int | None, list[tuple[str, str]]] = {}
        for key, request_id in slots:
            by_tenant.setdefault(keyspace.tenant_of(key), []).append((key, request_id))
        return [Call(RENEW, [key for key, _ in mine], [expires_at, *[request_id for _, request_id in mine]])
                for mine in by_tenant.values()]

    async def release(self, request_id: str, scopes: list[Scope]) -> None:
        if call := self.release_call(request_id, scopes):
            await scripts.run(self.url, [call])


def verdict(result: list[Any], scopes: list[Scope], now: float) -> Verdict:
    reset = WINDOW - int(now) % WINDOW
    if int(result[0]) == 1:
        remaining = [int(v) for v in result[1]]
        requests = [v for v in remaining[0::2] if v >= 0]
        tokens = [v for v in remaining[1::2] if v >= 0]
        limits_r = [s.limits.requests_per_minute for s in scopes if s.limits.requests_per_minute is not None]
        limits_t = [s.limits.tokens_per_minute for s in scopes if s.limits.tokens_per_minute is not None]
        return Verdict(True, remaining_requests=min(requests) if requests else None,
                       remaining_tokens=min(tokens) if tokens else None,
                       limit_requests=min(limits_r) if limits_r else None,
                       limit_tokens=min(limits_t) if limits_t else None, reset_seconds=reset)
    scope, kind, limit = scopes[int(result[1])], KINDS[int(result[2])], int(result[3])
    return Verdict(False, scope=scope, kind=kind, limit=limit, retry_after=1 if kind == "concurrent" else reset,
                   reset_seconds=reset)


class LocalLimiter:
    """The same limits, counted in this process (no Redis configured)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.window = 0
        self.in_flight: dict[str, set[str]] = {}

    async def acquire(self, request_id: str, scopes: list[Scope], tokens: int) -> Verdict:
        now = time.time()
        window = int(now // WINDOW)
        if window != self.window:
            self.counts, self.window = {}, window
        remaining: list[int] = []
        for i, scope in enumerate(scopes):
            r, t, c = keys_for(scope, window)
            limits = scope.limits
            used, used_tokens = self.counts.get(r, 0), self.counts.get(t, 0)
            if limits.requests_per_minute is not None and used + 1 > limits.requests_per_minute:
                return verdict([0, i, 1, limits.requests_per_minute], scopes, now)
            if limits.tokens_per_minute is not None and used_tokens + tokens > limits.tokens_per_minute:
                return verdict([0, i, 2, limits.tokens_per_minute], scopes, now)
            if limits.max_concurrent is not None and len(self.in_flight.get(c, ())) + 1 > limits.max_concurrent:
                return verdict([0, i, 3, limits.max_concurrent], scopes, now)
            remaining += [limits.requests_per_minute - used - 1 if limits.requests_per_minute is not None else -1,
                          limits.tokens_per_minute - used_tokens - tokens if limits.tokens_per_minute is not None else -1]
        for scope in scopes:
            r, t, c = keys_for(scope, window)
            self.counts[r] = self.counts.get(r, 0) + 1
            self.counts[t] = self.counts.get(t, 0) + tokens
            if scope.limits.max_concurrent is not None:
                self.in_flight.setdefault(c, set()).add(request_id)
        return verdict([1, remaining], scopes, now)

    async def release(self, request_id: str, scopes: list[Scope]) -> None:
        for scope in scopes:
            self.in_flight.get(keys_for(scope, 0)[2], set()).discard(request_id)

    def slot_keys(self, scopes: list[Scope]) -> list[str]:
        return []  # slots counted in this process end with it: nothing to recover


_limiter: RedisLimiter | LocalLimiter | None = None


def limiter() -> RedisLimiter | LocalLimiter:
    global _limiter
    if _limiter is None:
        url = settings.TOLLGATE_MONEY_REDIS_URL
        _limiter = RedisLimiter(url) if url else LocalLimiter()
    return _limiter


def reset_limiter() -> None:
    global _limiter
    _limiter = None
