"""The response cache: an identical request is answered again without asking the provider.

Opt-in per route (``ModelRoute.cache_enabled``) or per key (``ApiKey.response_cache``: "on" uses it on every route
with the route's TTL, "off" never). An entry's key is a hash of the request's JSON with sorted keys and no
whitespace, leaving out ``stream`` and ``stream_options`` (a streamed and a plain request share one entry), plus the
endpoint, the route's name and the tenant (unless the route shares its cache between tenants). Entries live in
Redis at TOLLGATE_CACHE_REDIS_URL with the route's TTL, or in a bounded memory of this process without Redis.

Only complete answers with status 200 and the provider's usage are kept. A hit has passed the gate like any
request (it takes a rate limit slot and its hold) and leaves its own ledger row: usage source "cache", the cached
answer's tokens, free or at full price as the route says. The lookup comes after the journal's begin line, as the
provider call would: a process killed while it waits on the cache's Redis still has its hold and slot settled by the
recovery. The cache is best effort: when its Redis is down a lookup is a miss and a store is skipped, never an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse

from . import cached_streams, sse
from .metering import Meter
from .providers.base import EMBEDDINGS, ApiRequest, CachePolicy, Completion, Target, Usage

logger = logging.getLogger(__name__)

PREFIX = "tollgate:answer:"  # Redis key prefix of every entry
LEFT_OUT = frozenset({"stream", "stream_options"})  # how an answer is delivered, not what it says
MAX_ENTRY_BYTES = 4 * 1024 * 1024  # larger answers are not kept
MEMORY_ENTRIES, MEMORY_BYTES = 1000, 64 * 1024 * 1024  # the in-process cache's bounds without Redis
QUIET_SECONDS = 30.0  # one log line per this long while the cache's Redis is down


@dataclass
class Ask:
    """One request's use of the cache: its entry key (None: the request is neither looked up nor kept)."""

    policy: CachePolicy
    key: str | None = None
    lookup: bool = True  # False for Cache-Control: no-cache (the answer is still kept)
    hit: bool = False


async def consult(request: HttpRequest, meter: Meter, target: Target) -> HttpResponseBase | None:
    """Return the cached answer (its row recorded), or None to ask the provider. Fills in ``meter.cache``."""
    caller, body, ask = meter.caller, meter.body, meter.cache
    assert caller is not None and body is not None and ask is not None
    policy = ask.policy
    control = request.headers.get("Cache-Control", "").lower()
    if caller.response_cache == "off" or "no-store" in control or not cacheable(body, policy):
        return None  # a bypass: answered as a miss, and nothing is kept
    ask.lookup = "no-cache" not in control
    ask.key = await asyncio.to_thread(entry_key, body, target, caller.tenant_id) if body.is_large else \
        entry_key(body, target, caller.tenant_id)
    if not ask.lookup:
        return None
    value = await store().get(ask.key)
    if value is None:
        return None
    head, _, payload = value.partition(b"\n")
    try:
        info = orjson.loads(head)
        usage = Usage(*info["usage"])
    except (ValueError, TypeError, KeyError):
        return None  # not an entry of this version: ask the provider, and the answer replaces it
    ask.hit = True
    meter.usage, meter.first_byte = usage, time.perf_counter()
    if (info.get("provider"), info.get("upstream_model")) != (target.provider_name, target.upstream_model):
        # Priced (at full cost) by the deployment that answered, not the one that would have been asked now.
        meter.target = replace(target, provider_name=info["provider"], upstream_model=info["upstream_model"])
    await meter.record(end_reason="complete", status=200)
    if not body.stream:
        return HttpResponse(payload, content_type="application/json")
    frames = cached_streams.replay(orjson.loads(payload), body)
    return StreamingHttpResponse(played(frames), content_type="text/event-stream", headers=sse.HEADERS)


async def played(frames: list[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame


def cacheable(body: ApiRequest, policy: CachePolicy) -> bool:
    """Whether the route's policy lets this request's answer be reused at all."""
    data = body.data
    if policy.per_user and data.get("user") is not None:
        return False
    if body.endpoint == EMBEDDINGS:
        return True
    if data.get("logprobs"):
        return False  # a stream and a whole answer carry log probabilities differently: one entry cannot serve both
    if policy.sampled:
        return True
    n, temperature = data.get("n"), data.get("temperature")
    temperature = 1 if temperature is None else temperature  # OpenAI's default
    # n > 1 at a temperature above 0 asks for several different answers: one cached set would always repeat them.
    return not (isinstance(n, int) and n > 1 and isinstance(temperature, (int, float)) and temperature > 0)


def entry_key(body: ApiRequest, target: Target, tenant_id: int) -> str:
    """The entry's key: a hash of the normalised request, the endpoint, the route and (unless shared) the tenant."""
    data = {name: value for name, value in body.data.items() if name not in LEFT_OUT}
    try:
        normal = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)  # sorts nested objects too, no whitespace
    except TypeError:  # integers past 64 bits
        normal = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    owner = "*" if target.cache.shared else str(tenant_id)
    scope = f"{body.endpoint}\0{target.public_model}\0{owner}\0".encode()
    return PREFIX + hashlib.sha256(scope + normal).hexdigest()


async def keep(meter: Meter, completion: Completion) -> None:
    """Store a complete, non-streamed answer under the request's entry key (best effort)."""
    ask, usage = meter.cache, completion.usage
    if ask is None or ask.key is None or usage is None:
        return
    payload = completion.raw if completion.raw is not None else orjson.dumps(completion.payload)
    await put(ask, meter, usage, payload)


async def recording(relayed: AsyncIterator[bytes], meter: Meter) -> AsyncIterator[bytes]:
    """Relay the stream, then keep the answer it made when it ended complete."""
    frames: list[bytes] = []
    try:
        async for frame in relayed:
            frames.append(frame)
            yield frame
    finally:
        await relayed.aclose()  # type: ignore[attr-defined]
    ask, usage, body = meter.cache, meter.usage, meter.body
    if ask is None or ask.key is None or usage is None or body is None or meter.outcome != ("complete", 200, ""):
        return
    if len(frames) > 200:  # a long answer is assembled off the event loop
        payload = await asyncio.to_thread(cached_streams.assemble, frames, body, usage)
    else:
        payload = cached_streams.assemble(frames, body, usage)
    if payload is not None:
        await put(ask, meter, usage, payload)


async def put(ask: Ask, meter: Meter, usage: Usage, payload: bytes) -> None:
    target = meter.target
    assert ask.key is not None and target is not None
    # Positional, as Usage's fields: an entry written before cache writes were counted (three numbers) still reads.
    head = orjson.dumps({"usage": [usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                                   usage.cache_write_tokens],
                         "provider": target.provider_name, "upstream_model": target.upstream_model})
    if len(head) + len(payload) < MAX_ENTRY_BYTES:
        await store().set(ask.key, head + b"\n" + payload, ask.policy.ttl_seconds)


class MemoryStore:
    """This process's cache when there is no Redis: least recently used entries go first, each with its TTL."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.size = 0

    async def get(self, key: str) -> bytes | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self.drop(key)
            return None
        self.entries.move_to_end(key)
        return entry[1]

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        self.drop(key)
        self.entries[key] = (time.monotonic() + ttl, value)
        self.size += len(value)
        while len(self.entries) > MEMORY_ENTRIES or self.size > MEMORY_BYTES:
            self.drop(next(iter(self.entries)))

    def drop(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.size -= len(entry[1])


class RedisStore:
    """Entries in Redis. Every failure is a miss (get) or a skipped store (set), logged once per outage."""

    def __init__(self, url: str) -> None:
        import redis.asyncio

        # Short timeouts: a slow cache must cost a request little more than asking the provider would.
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    async def get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self.client.get(key)
            return value
        except Exception as e:
            note(e)
            return None

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        try:
            await self.client.set(key, value, ex=ttl)
        except Exception as e:
            note(e)


_last_logged = -QUIET_SECONDS


def note(error: Exception) -> None:
    global _last_logged
    if time.monotonic() - _last_logged >= QUIET_SECONDS:
        _last_logged = time.monotonic()
        logger.warning("response cache unavailable (%s); requests go to their providers", type(error).__name__)


_memory = MemoryStore()
_redis: dict[tuple[asyncio.AbstractEventLoop, str], RedisStore] = {}


def store() -> MemoryStore | RedisStore:
    """The cache of this event loop: Redis at TOLLGATE_CACHE_REDIS_URL, else this process's memory."""
    url = settings.TOLLGATE_CACHE_REDIS_URL
    if not url:
        return _memory
    loop = asyncio.get_running_loop()
    if (loop, url) not in _redis:
        for stale in [key for key in _redis if key[0].is_closed()]:
            del _redis[stale]
        _redis[(loop, url)] = RedisStore(url)  # a client is bound to one event loop
    return _redis[(loop, url)]


def forget() -> None:
    """Empty this process's memory cache (Redis entries expire by their TTL)."""
    global _memory
    _memory = MemoryStore()
