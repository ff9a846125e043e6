"""Automatic pipelining of the gate's Redis scripts."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from billing import scripts
from billing.scripts import Call

pytestmark = pytest.mark.needs_redis

ECHO = Call("return ARGV[1]", [], ["x"])
BROKEN = Call("return redis.call('NO-SUCH-COMMAND')", [], [])


def test_calls_made_during_a_round_trip_share_the_next_and_an_error_stays_with_its_caller() -> None:
    url = os.environ.get("REDIS_URL", "")

    async def main() -> tuple[list[int], list[Any]]:
        connection = scripts.connection(url)
        sent: list[int] = []
        send = connection.send

        async def counted(calls: list[Call]) -> list[Any]:
            sent.append(len(calls))
            return await send(calls)

        connection.send = counted  # type: ignore[method-assign]
        results = await asyncio.gather(*(scripts.run(url, [ECHO, ECHO]) for _ in range(10)),
                                       scripts.run(url, [BROKEN]), scripts.run(url, [ECHO]), return_exceptions=True)
        assert await scripts.run(url, [ECHO]) == [b"x"]  # alone: at once, in a round trip of its own
        return sent, results

    sent, results = asyncio.run(main())
    assert sent == [22, 1]  # the callers of one moment share one round trip
    assert results[:10] == [[b"x", b"x"]] * 10 and results[11] == [b"x"]
    assert "NO-SUCH-COMMAND" in str(results[10]) or "Unknown" in str(results[10])
    assert isinstance(results[10], Exception)
