"""CSV exports of the Requests page: the tenant's own filtered rows, exact money, no formulas, streamed in constant memory."""

from __future__ import annotations

import csv
import gc
import io
import time
import tracemalloc
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.http import StreamingHttpResponse
from django.test import AsyncClient, Client

from billing.export import FORMULA_START, cells, money
from billing.models import picos_to_dollars
from billing.models import UsageRecord
from billing.views import EXPORT_HEADER

from ..conftest import Party
from ..factories import make_key

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)


def signed_in(party: Party) -> Client:
    client = Client()
    client.force_login(party.user)
    return client


def record(party: Party, *, picos: int = 1_000, model: str = "gpt-4o", at: datetime = T0, **fields: object) -> UsageRecord:
    return UsageRecord.objects.create(tenant=party.tenant, key=fields.pop("key", party.key), endpoint="chat",
                                      public_model=model, provider=fields.pop("provider", "openai"),
                                      end_reason=fields.pop("end_reason", "complete"), status_code=200,
                                      prompt_tokens=100, completion_tokens=20, latency_ms=120, ttfb_ms=30,
                                      cost_picos=picos, created_at=at, **fields)


def rows_of(response: StreamingHttpResponse) -> list[dict[str, str]]:
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment; filename=")
    text = b"".join(response.streaming_content).decode()  # type: ignore[arg-type]
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    assert header == EXPORT_HEADER
    return [dict(zip(header, line, strict=True)) for line in reader]


def test_export_holds_every_row_the_filters_select_with_exact_dollars(alice: Party) -> None:
    alice.tenant.timezone = "Asia/Tokyo"
    alice.tenant.save()
    other, _ = make_key(alice.tenant, name="batch")
    for i in range(120):  # more than a page of the Requests page: the export is not paged
        record(alice, picos=7, at=T0 - timedelta(days=3, minutes=i))
    record(alice, picos=1)  # one pico-dollar
    record(alice, picos=1_234_567_890_123_456, model="claude", at=T0 + timedelta(minutes=1))
    last = record(alice, picos=10**12, key=other, at=T0 + timedelta(days=2), end_reason="upstream_error",
                  error_code="boom")
    client = signed_in(alice)

    everything = rows_of(client.get("/requests/export.csv"))
    assert len(everything) == 123  # newest written first, as on the page
    assert [r["cost_usd"] for r in everything[:3]] == ["1.000000000000", "1234.567890123456", "0.000000000001"]
    assert everything[1]["time"] == "2026-11-20T21:01:00+09:00"  # the tenant's time zone, as on the page
    newest = everything[0]
    assert newest["request_id"] == last.request_id.hex  # as in the x-request-id header
    assert (newest["key"], newest["outcome"], newest["error_code"], newest["provider"]) == ("batch", "upstream_error",
                                                                                             "boom", "openai")
    assert (newest["prompt_tokens"], newest["latency_ms"], newest["ttfb_ms"], newest["status"]) == ("100", "120", "30", "200")
    assert sum(Decimal(r["cost_usd"]) for r in everything) == Decimal(120 * 7 + 1 + 1_234_567_890_123_456 + 10**12) / 10**12

    assert [r["model"] for r in rows_of(client.get("/requests/export.csv", {"model": "claude"}))] == ["claude"]
    assert [r["key"] for r in rows_of(client.get("/requests/export.csv", {"key": other.pk}))] == ["batch"]
    assert len(rows_of(client.get("/requests/export.csv", {"end_reason": "upstream_error"}))) == 1
    dated = rows_of(client.get("/requests/export.csv", {"day_from": "2026-11-20", "day_to": "2026-11-21"}))
    assert [r["cost_usd"] for r in dated] == ["1234.567890123456", "0.000000000001"]
    # The page's keyset cursor is not a filter: the download holds every matching row.
    assert len(rows_of(client.get("/requests/export.csv", {"before": "1"}))) == 123


def test_the_requests_page_links_the_download_with_its_filters(alice: Party) -> None:
    records = [record(alice, model="claude", at=T0 + timedelta(minutes=i)) for i in range(60)]
    client = signed_in(alice)
    page = client.get("/requests/").content.decode()
    assert '<a class="button" href="/requests/export.csv" download>Download CSV</a>' in page
    filtered = client.get("/requests/", {"model": "claude", "before": records[30].pk}).content.decode()
    assert 'href="/requests/export.csv?model=claude" download>Download CSV</a>' in filtered


def test_bob_cannot_export_alices_rows(client: Client, alice: Party, bob: Party) -> None:
    record(alice, model="alices-model")
    record(bob, model="bobs-model")
    assert client.get("/requests/export.csv").status_code == 302  # signed out: to the sign-in page
    bobs = signed_in(bob)
    assert [r["model"] for r in rows_of(bobs.get("/requests/export.csv"))] == ["bobs-model"]
    # Parameters naming alice's tenant are not filters the page has: ignored, still bob's rows only.
    forged = bobs.get("/requests/export.csv", {"tenant": alice.tenant.pk, "tenant_id": alice.tenant.pk,
                                               "model": "alices-model"})
    assert rows_of(forged) == []
    # alice's key is not one of bob's choices: refused like any bad filter, nothing exported.
    refused = bobs.get("/requests/export.csv", {"key": alice.key.pk})
    assert refused.status_code == 400 and not refused.streaming and "alices-model" not in refused.content.decode()


@pytest.mark.parametrize("params", [
    {"key": "abc"}, {"key": str(10**30)}, {"end_reason": "bogus"}, {"day_from": "not a day"},
    {"day_from": "0001-01-01"}, {"day_to": "9999-12-31"}, {"before": str(10**30)}, {"before": "-5"},
    {"model": "x" * 201}, {"model": "a\x00b"},
])
def test_bad_filters_are_a_400_on_the_export_and_never_a_500_on_the_page(alice: Party, params: dict[str, str]) -> None:
    record(alice)
    client = signed_in(alice)
    refused = client.get("/requests/export.csv", params)
    assert refused.status_code == 400 and 'class="errorlist' in refused.content.decode()
    page = client.get("/requests/", params)
    assert page.status_code == 200 and 'class="errorlist' in page.content.decode()


def test_cells_a_spreadsheet_would_run_as_formulas_are_written_as_text(alice: Party) -> None:
    record(alice, model="=HYPERLINK(\"http://evil.example\",\"x\")", provider="+cmd", upstream_model="-2+3",
           error_code="@SUM(A1)")
    record(alice, model="\tTAB", error_code="\r=1", provider="plain")
    exported = rows_of(signed_in(alice).get("/requests/export.csv"))
    assert exported[1]["model"] == "'=HYPERLINK(\"http://evil.example\",\"x\")"
    assert (exported[1]["provider"], exported[1]["upstream_model"], exported[1]["error_code"]) == ("'+cmd", "'-2+3",
                                                                                                    "'@SUM(A1)")
    assert (exported[0]["model"], exported[0]["error_code"], exported[0]["provider"]) == ("'\tTAB", "'\r=1", "plain")
    for line in exported:
        assert not any(value[:1] in FORMULA_START for value in line.values())
    # Numbers are numbers: an exact negative amount or count is not a formula and stays as it is.
    assert cells([money(-1), -3, None, "-3"]) == ["-0.000000000001", -3, None, "'-3"]


def test_amounts_are_exact_dollars() -> None:
    for picos in (0, 1, 999_999_999_999, 10**12, 1_234_567_890_123_456, 10**20 + 7, -1, -(10**12) - 5):
        assert money(picos) == format(picos_to_dollars(picos), "f")
        assert Decimal(money(picos)) * 10**12 == picos


def test_under_asgi_the_export_is_an_async_stream(alice: Party, bob: Party) -> None:
    for i in range(1_234):  # a few batches of lines
        record(alice, picos=i, at=T0 + timedelta(seconds=i))
    record(bob, model="bobs-model")

    async def download() -> tuple[StreamingHttpResponse, list[bytes]]:
        client = AsyncClient()
        await client.aforce_login(alice.user)
        response = await client.get("/requests/export.csv")
        return response, [part async for part in response.streaming_content]

    with warnings.catch_warnings():  # Django's warning that it read the whole export into a list first
        warnings.filterwarnings("error", message="StreamingHttpResponse must consume")
        response, parts = async_to_sync(download)()
    assert response.status_code == 200 and response.is_async and len(parts) > 1
    lines = list(csv.reader(io.StringIO(b"".join(parts).decode())))
    assert lines[0] == EXPORT_HEADER and len(lines) == 1 + 1_234
    assert [line[EXPORT_HEADER.index("cost_usd")] for line in lines[1:3]] == ["0.000000001233", "0.000000001232"]
    assert "bobs-model" not in b"".join(parts).decode()


def insert_rows(party: Party, count: int, *, first: int = 1) -> None:
    """``count`` ledger rows of one tenant, inserted by the database itself (a row at a time would take minutes).

    Request ids count up (the i-th is i in hex) so the unique index is appended to rather than written all over.
    """
    table = UsageRecord._meta.db_table
    columns = ("request_id, tenant_id, key_id, endpoint, public_model, provider, upstream_model, stream, prompt_tokens, "
               "completion_tokens, cached_tokens, usage_source, end_reason, error_code, status_code, latency_ms, "
               "ttfb_ms, cost_picos, unpriced, gate, created_at")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT lpad(to_hex(i), 32, '0')::uuid, %s, %s, 'chat', 'gpt-4o', "
                "'openai', 'gpt-4o-2024-08-06', false, 1000, 200, 0, 'provider', 'complete', '', 200, 850, 120, "
                "1234567 + i, false, '{}'::jsonb, %s FROM generate_series(%s, %s) AS i",
                [party.tenant.pk, party.key.pk, T0, first, first + count - 1])
        else:
            cursor.execute(
                f"WITH RECURSIVE n(i) AS (SELECT %s UNION ALL SELECT i + 1 FROM n WHERE i < %s) "
                f"INSERT INTO {table} ({columns}) SELECT printf('%%032x', i), %s, %s, 'chat', 'gpt-4o', 'openai', "
                "'gpt-4o-2024-08-06', 0, 1000, 200, 0, 'provider', 'complete', '', 200, 850, 120, 1234567 + i, 0, "
                "'{}', %s FROM n", [first, first + count - 1, party.tenant.pk, party.key.pk, T0.strftime("%Y-%m-%d %H:%M:%S")])


async def download(party: Party, consume: Callable[[bytes], None]) -> None:
    """Export the party's requests as the ASGI server would serve them, handing each part to ``consume``."""
    client = AsyncClient()
    await client.aforce_login(party.user)
    response = await client.get("/requests/export.csv")
    assert response.status_code == 200 and response.is_async
    async for part in response.streaming_content:
        consume(part)


class Tally:
    def __init__(self) -> None:
        self.lines = self.size = 0
        self.first = self.last = b""

    def __call__(self, part: bytes) -> None:
        self.lines, self.size = self.lines + part.count(b"\n"), self.size + len(part)
        self.first, self.last = self.first or part, part


def peak_traced_while_exporting(party: Party) -> tuple[Tally, int]:
    tally = Tally()
    tracemalloc.start()
    try:
        async_to_sync(download)(party, tally)
        return tally, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.django_db(transaction=True)  # 100,000 rows: truncated afterwards, like the million below
def test_the_memory_an_export_takes_does_not_grow_with_its_rows(alice: Party) -> None:
    insert_rows(alice, 10_000)
    small, small_peak = peak_traced_while_exporting(alice)
    insert_rows(alice, 90_000, first=10_001)
    large, large_peak = peak_traced_while_exporting(alice)
    assert (small.lines, large.lines) == (10_001, 100_001)  # the header and every row
    assert large.size > 10 * 2**20 and large.size > 9 * small.size
    # Every line passes through memory, but none stays: the peak is the same for ten times the rows.
    assert large_peak < 20 * 2**20 and large_peak < small_peak + 2**20


def peak_resident_kib() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])


# Committed and truncated afterwards (transaction=True): rolled back instead, PostgreSQL would keep the rows as dead
# tuples until autovacuum, and every later count of the ledger in the suite would scan them (the fuzz tests went
# from 4 s to 46 s).
@pytest.mark.needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_million_rows_export_in_constant_memory(alice: Party) -> None:
    # Tracing every allocation of a million rows (tracemalloc, above) takes minutes: here the process's peak
    # resident size is watched instead, reset first (Linux: writing 5 to clear_refs resets VmHWM).
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError as e:
        pytest.skip(f"cannot reset the peak resident size here: {e}")
    started = time.monotonic()
    insert_rows(alice, 1_000_000)
    tally, before = Tally(), peak_resident_kib()
    try:
        async_to_sync(download)(alice, tally)
    finally:
        # Measured: after this export, the same database connection made every later /v1 request in the suite
        # about ten times slower (the fuzz tests: 4 s -> 46 s) until it was closed; a new one opens on demand.
        gc.collect()
        connection.close()
    grown = peak_resident_kib() - before
    assert tally.lines == 1_000_001  # the header and every row
    assert tally.first.startswith(b"time,request_id,") and tally.last.endswith(b",0.000001234568,0,0,,,\r\n")  # i = 1, last; no project, tags, user
    assert tally.size > 150 * 2**20  # the export is this big ...
    assert grown < 40 * 2**10, f"the peak resident size grew by {grown} KiB"  # ... the memory it takes is not
    assert time.monotonic() - started < 60
