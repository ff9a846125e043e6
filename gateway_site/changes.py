"""Change announcements: every serving process drops its copy of a changed table or key within a second.

Each process keeps small tables in memory (routes, budgets, prices) and recent key records, so the /v1 path costs
no I/O for them. When one of them changes, ``announce(kind, detail)`` runs this process's handlers at once, and
after the transaction commits runs them again (a request may have reloaded the old rows meanwhile) and publishes
the change on a Redis channel while counting it in a version counter. Every serving process listens on that
channel (a task on its event loop, started with its upkeep) and runs its own handlers for each message.

Pub/sub forgets what it sends while a listener is disconnected, so the listener also reads the version counter
once a second and drops everything on a gap, and drops everything after each (re)connect. Nothing here runs per
request. Without Redis there is one process: announce runs the local handlers only.

The announcements use REDIS_URL, where the shared key cache lives too: they are messages about cached copies, not
money state, and they need no protection from eviction (a counter that restarts also drops everything).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

VERSION = "tg:changes:version"
CHECK_SECONDS = 1.0  # how often a listener reads the version counter; the bound on a lost message's delay
ALL = ""  # the detail handed to every handler when everything must go
PUBLISH = """
local version = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], version .. ' ' .. ARGV[2])
return version
"""

Handler = Callable[[str], None]
_handlers: dict[str, list[Handler]] = {}
_clients: dict[str, Any] = {}
_listeners: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def register(kind: str, handler: Handler) -> None:
    """Call ``handler(detail)`` whenever ``kind`` changes, here or in another process; detail ALL means everything."""
    if handler not in _handlers.setdefault(kind, []):
        _handlers[kind].append(handler)


def announce(kind: str, detail: str = "") -> None:
    """Tell every process that ``kind`` changed: here now and after commit, elsewhere after commit. Never raises
    for Redis: the change is committed either way, and the other processes' copies still expire on their own."""
    handle(kind, detail)

    def committed() -> None:
        handle(kind, detail)
        if settings.REDIS_URL:
            publish(settings.REDIS_URL, kind, detail)

    transaction.on_commit(committed)


def handle(kind: str, detail: str) -> None:
    for handler in _handlers.get(kind, ()):
        try:
            handler(detail)
        except Exception:
            logger.exception("change handler for %s failed", kind)


def drop_everything() -> None:
    for kind in list(_handlers):
        handle(kind, ALL)


def channel(url: str) -> str:
    # Pub/sub channels are shared by every database of a Redis server: name the database, so that two gateways
    # on one server (each on its own database) do not hear each other.
    import redis.connection

    return f"tg:changes:{redis.connection.parse_url(url).get('db', 0)}"


def publish(url: str, kind: str, detail: str) -> None:
    try:
        client = _clients.get(url)
        if client is None:
            import redis

            client = _clients[url] = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        client.eval(PUBLISH, 1, VERSION, channel(url), f"{kind} {detail}")
    except Exception as e:
        logger.warning("change of %s not announced to other processes (%s: %s); they reload it within their cache "
                       "time", kind, type(e).__name__, str(e)[:200])


def start() -> None:
    """Start this event loop's listener, once; nothing without Redis."""
    if not settings.REDIS_URL:
        return
    loop = asyncio.get_running_loop()
    task = _listeners.get(loop)
    if task is None or task.done():
        for stale in [other for other in _listeners if other.is_closed()]:
            del _listeners[stale]
        _listeners[loop] = loop.create_task(listen(settings.REDIS_URL))


async def stop() -> None:
    task = _listeners.pop(asyncio.get_running_loop(), None)
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def listen(url: str) -> None:
    """Follow the announcements for good, reconnecting a second after Redis goes away."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    quiet_until = 0.0
    while True:
        # No silent retries: a reconnect must be seen here, since what was announced meanwhile is lost.
        client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0,
                                              retry=Retry(NoBackoff(), 0))
        try:
            await follow(client, channel(url))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if time.monotonic() >= quiet_until:  # one line per outage minute, not one per second
                quiet_until = time.monotonic() + 60.0
                logger.warning("change announcements: lost Redis (%s: %s); reconnecting every second",
                               type(e).__name__, str(e)[:200])
        finally:
            try:
                await client.aclose()
            except Exception:
                pass
        await asyncio.sleep(1.0)


async def follow(client: Any, name: str) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(name)
        seen = await version(client)
        drop_everything()  # whatever was announced before this subscription is unknown here
        checked = time.monotonic()
        while True:
            wait = max(0.0, checked + CHECK_SECONDS - time.monotonic())
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            if message is not None:
                seen = receive(message["data"], seen)
            if time.monotonic() - checked >= CHECK_SECONDS:
                checked = time.monotonic()
                current = await version(client)
                # Messages sent before that reply may still wait in the subscription: read them first.
                while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)) is not None:
                    seen = receive(message["data"], seen)
                # Lower than seen: the counter restarted (flushed, evicted); a message lost since then is unknown.
                if current != seen:
                    logger.info("change announcements: version %s after %s; dropping every cached copy", current, seen)
                    drop_everything()
                    seen = current
    finally:
        await pubsub.aclose()


def receive(data: bytes, seen: int) -> int:
    """Apply one message; returns its version. A version out of sequence means one was lost: drop everything."""
    number, _, rest = data.decode(errors="replace").partition(" ")
    kind, _, detail = rest.partition(" ")
    try:
        current = int(number)
    except ValueError:  # not an announcement (someone else publishing on the channel): ignore it
        logger.warning("change announcements: ignored a message that is not one: %r", data[:100])
        return seen
    if current != seen + 1:
        drop_everything()
    else:
        handle(kind, detail)
    return current


async def version(client: Any) -> int:
    return int(await client.get(VERSION) or 0)
