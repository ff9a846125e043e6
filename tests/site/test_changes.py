"""Change announcements (gateway_site/changes.py): local handlers at once and after commit, Redis for the others,
and a listener that heals a lost message with its once-a-second version check."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import pytest
from django.test import override_settings

from gateway_site import changes

from ..faults.tcp_proxy import FaultProxy


@pytest.fixture
def heard(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What this process's handlers were called with: a "test" kind only, the real ones left alone."""
    calls: list[str] = []
    monkeypatch.setattr(changes, "_handlers", {"test": [calls.append]})
    return calls


@pytest.mark.django_db
@override_settings(REDIS_URL="")
def test_without_redis_an_announcement_runs_the_local_handlers_only(
        heard: list[str], monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Callable) -> None:
    monkeypatch.setattr(changes, "publish", lambda *args: pytest.fail("published without Redis"))
    with django_capture_on_commit_callbacks(execute=True):
        changes.announce("test", "x")
        assert heard == ["x"]  # at once
    assert heard == ["x", "x"]  # and again after commit: a request may have reloaded the old rows meanwhile


@pytest.mark.django_db
@override_settings(REDIS_URL="redis://127.0.0.1:6379/4")
def test_an_announcement_is_published_after_commit_only(
        heard: list[str], monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Callable) -> None:
    published: list[tuple[str, str, str]] = []
    monkeypatch.setattr(changes, "publish", lambda *args: published.append(args))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        changes.announce("test", "x")
    assert published == []  # rolled back: nobody else hears of it
    for callback in callbacks:
        callback()
    assert published == [("redis://127.0.0.1:6379/4", "test", "x")]


def test_a_failed_publish_does_not_fail_the_change(caplog: pytest.LogCaptureFixture) -> None:
    changes.publish("redis://127.0.0.1:1/0", "test", "x")  # nothing listens there
    assert "not announced" in caplog.text


def test_the_channel_names_the_database() -> None:
    # Channels are shared by the databases of a server: two gateways on databases 1 and 2 must not hear each other.
    assert changes.channel("redis://127.0.0.1:6379/1") != changes.channel("redis://127.0.0.1:6379/2")


async def until(condition: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "not within the time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.mark.needs_redis
def test_the_listener_applies_messages_and_heals_a_lost_one_within_a_second(heard: list[str]) -> None:
    import redis

    url = os.environ["REDIS_URL"]
    client = redis.Redis.from_url(url)

    async def scenario() -> None:
        listener = asyncio.ensure_future(changes.listen(url))
        try:
            await until(lambda: heard == [changes.ALL], 5)  # subscribed: what came before is unknown, all dropped
            await asyncio.to_thread(changes.publish, url, "test", "x")
            assert await until(lambda: heard[-1:] == ["x"], 1) < 0.5
            heard.clear()
            client.incr(changes.VERSION)  # a change whose message this listener never got
            took = await until(lambda: heard == [changes.ALL], 2)
            assert took <= changes.CHECK_SECONDS + 0.2
            heard.clear()
            # The next message after the gap is in sequence again: applied on its own, nothing more dropped.
            await asyncio.to_thread(changes.publish, url, "test", "y")
            await until(lambda: heard == ["y"], 1)
            await asyncio.sleep(changes.CHECK_SECONDS + 0.2)  # a version check passes: no gap, nothing dropped
            assert heard == ["y"]
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    asyncio.run(scenario())
    client.close()


@pytest.mark.needs_redis
def test_a_listener_that_lost_redis_drops_everything_once_back(heard: list[str]) -> None:
    from urllib.parse import urlsplit

    url = os.environ["REDIS_URL"]
    parts = urlsplit(url)
    with FaultProxy(parts.port or 6379) as proxy:

        async def scenario() -> None:
            listener = asyncio.ensure_future(changes.listen(f"redis://127.0.0.1:{proxy.port}{parts.path}"))
            try:
                await until(lambda: heard == [changes.ALL], 5)
                heard.clear()
                proxy.cut()
                await asyncio.to_thread(changes.publish, url, "test", "x")  # announced while the listener is away
                await asyncio.sleep(0.5)
                proxy.restore()
                await until(lambda: heard == [changes.ALL], 5)  # reconnected: everything dropped, "x" included
            finally:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

        asyncio.run(scenario())


def test_a_message_that_is_not_an_announcement_is_ignored(heard: list[str]) -> None:
    assert changes.receive(b"hello there", 7) == 7
    assert changes.receive(b"8 test x", 7) == 8
    assert changes.receive(b"10 test y", 8) == 10  # 9 was lost: everything is dropped instead
    assert heard == ["x", changes.ALL]
