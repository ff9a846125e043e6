"""CSV exports streamed in constant memory: rows are read from the database in chunks and written a batch of lines
at a time, so an export of millions of ledger rows holds only one chunk and one batch.

Served under ASGI (uvicorn, daphne), a response over a plain iterator would be read whole into a list before the
first byte leaves, so there the lines are pulled through sync_to_async, a batch per call, as an async iterator.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import islice

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse

CHUNK = 2_000  # rows fetched from the database at a time (QuerySet.iterator's chunk_size)
BATCH = 500  # CSV lines sent to the client at a time
PICOS_PER_DOLLAR = 10**12
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection). Model names, providers and
# error codes come from clients and upstreams, so such text is written behind a single quote, as text.
FORMULA_START = frozenset("=+-@\t\r")


class Amount(str):
    """Exact dollars, written as they are: a number, so never taken for a formula."""


def money(picos: int) -> Amount:
    """Pico-dollars as exact dollars with all twelve decimals (1 -> 0.000000000001): integers only, never a float."""
    whole, fraction = divmod(abs(picos), PICOS_PER_DOLLAR)
    return Amount(f"{'-' if picos < 0 else ''}{whole}.{fraction:012d}")


def utc(text: str) -> datetime:
    """A timestamp the database gave as text: with its offset (PostgreSQL), or naive UTC as Django stores it (SQLite)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cells(row: Sequence[object]) -> list[object]:
    # `type(...) is str` on purpose: an Amount is not text to neutralise. None is written as an empty cell.
    return [f"'{value}" if type(value) is str and value[:1] in FORMULA_START else value for value in row]


class Echo:
    """A file-like object that hands back what it is given, so csv.writer formats one line at a time."""

    def write(self, value: str) -> str:
        return value


def csv_lines(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Iterator[str]:
    writer = csv.writer(Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow(cells(row))


def batches(lines: Iterator[str], size: int = BATCH) -> Iterator[str]:
    while batch := "".join(islice(lines, size)):
        yield batch


async def abatches(lines: Iterator[str], size: int = BATCH) -> AsyncIterator[str]:
    # Thread-sensitive: every batch runs on the request's thread, whose database connection holds the cursor.
    take = sync_to_async(lambda: "".join(islice(lines, size)), thread_sensitive=True)
    try:
        while batch := await take():
            yield batch
    finally:
        await sync_to_async(getattr(lines, "close", lambda: None), thread_sensitive=True)()


def csv_response(request: HttpRequest, *, filename: str, header: Sequence[str],
                 rows: Iterable[Sequence[object]]) -> StreamingHttpResponse:
    """A streamed CSV download of ``rows`` (read lazily), as an async iterator when served under ASGI."""
    lines = csv_lines(header, rows)
    content = abatches(lines) if isinstance(request, ASGIRequest) else batches(lines)
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response
