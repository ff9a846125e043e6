"""Reading a batch's input file: its requests by index, from storage, never whole in memory."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from . import storage
from .models import File

READ_LINES = 200  # input lines read per step, in a worker thread


def requests(row: File, start: int) -> Iterator[tuple[int, bytes]]:
    """(index, line) of the input file's requests from ``start`` on; blank lines are not requests and have no index."""
    with storage.open_content(row) as f:
        index = 0
        for line in f:
            line = line.strip()
            if not line:
                continue
            if index >= start:
                yield index, line
            index += 1


Line = tuple[int, str, dict[str, Any], int]  # index, custom_id, body, size of the line in bytes


def parse_line(index: int, raw: bytes) -> Line:
    try:
        line = json.loads(raw)
        custom_id, body = str(line["custom_id"]), line.get("body")
    except (ValueError, KeyError, TypeError, AttributeError):
        custom_id, body = f"line-{index + 1}", None  # validation lets no such line through; fail it, never skip
    return index, custom_id, body if isinstance(body, dict) else {}, len(raw)


async def unclaimed(reader: Iterator[tuple[int, bytes]], last: int, done: set[int]) -> AsyncIterator[Line]:
    """The part's lines not claimed when it started, read from storage in a worker thread, a few hundred at a time."""
    while chunk := await asyncio.to_thread(lambda: list(itertools.islice(reader, READ_LINES))):
        for index, raw in chunk:
            if index >= last:
                return
            if index not in done:
                yield parse_line(index, raw)


async def take(source: AsyncIterator[Line], count: int) -> list[Line]:
    """The next ``count`` lines of the source, fewer at its end."""
    group: list[Line] = []
    while len(group) < count:
        try:
            group.append(await anext(source))
        except StopAsyncIteration:
            break
    return group
