from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import TestCase, override_settings
from pytest_django import DjangoAssertNumQueries, Settings

from billing import pricing
from billing.management.commands.loadprices import BUNDLED
from billing.models import Price
from proxy.models import Provider

D = Decimal


def price(**fields: Any) -> Price:
    fields.setdefault("model", "gpt-4o")
    fields.setdefault("effective_from", date(2025, 1, 1))
    fields.setdefault("input_per_million", D("2.50"))
    fields.setdefault("output_per_million", D("10.00"))
    return Price(**fields)


@pytest.fixture(autouse=True)
def fresh_table() -> Iterator[None]:
    pricing.forget()
    yield
    pricing.forget()


def test_cost_charges_cached_tokens_at_the_cached_price() -> None:
    gpt4o = price(cached_input_per_million=D("1.25"))
    # 600 uncached x 2.50 + 400 cached x 1.25 + 500 x 10.00, in micro-dollars
    assert gpt4o.cost_micros(prompt_tokens=1000, cached_tokens=400, completion_tokens=500) == 1500 + 500 + 5000
    # More cached tokens than prompt tokens is a provider's miscount: never more than the prompt is discounted.
    assert gpt4o.cost_micros(prompt_tokens=100, cached_tokens=900, completion_tokens=0) == 125


def test_cost_without_a_cached_price_charges_the_input_price() -> None:
    assert price().cost_micros(prompt_tokens=1000, cached_tokens=400, completion_tokens=0) == 2500


def test_cost_adds_the_per_request_price() -> None:
    search = price(input_per_million=D("0"), output_per_million=D("0"), per_request=D("0.025"))
    assert search.cost_micros(prompt_tokens=10, completion_tokens=10) == 25_000
    assert search.cost_micros(prompt_tokens=10, completion_tokens=10, requests=3) == 75_000


def test_cost_in_picos_is_exact_and_the_hold_in_micros_rounds_up() -> None:
    # 100 x 0.145 is exactly 14.5 micro-dollars: 14,500,000 pico-dollars, kept whole; a hold rounds it up.
    half = price(input_per_million=D("0.145"))
    assert half.cost_picos(prompt_tokens=100, completion_tokens=0) == 14_500_000
    assert half.cost_micros(prompt_tokens=100, completion_tokens=0) == 15
    # Two parts of 0.4 micro-dollars: 0.8 micro-dollars exactly, never rounded to 0 or 1 in the ledger.
    tiny = price(input_per_million=D("0.002"), output_per_million=D("0.004"))
    assert tiny.cost_picos(prompt_tokens=200, completion_tokens=100) == 800_000
    assert tiny.cost_micros(prompt_tokens=200, completion_tokens=100) == 1
    # The smallest price on the smallest count: one token at $0.000001 per million is one pico-dollar.
    assert price(input_per_million=D("0.000001")).cost_picos(prompt_tokens=1, completion_tokens=0) == 1
    assert price(input_per_million=D("0.000001")).cost_micros(prompt_tokens=1, completion_tokens=0) == 1
    # Large counts stay exact: a billion tokens at 0.075 is exactly 75 dollars.
    cached = price(cached_input_per_million=D("0.075"))
    cost = cached.cost_picos(prompt_tokens=10**9, cached_tokens=10**9, completion_tokens=0)
    assert cost == 75 * 10**12 and isinstance(cost, int)


@pytest.fixture
def openai(db: None) -> Provider:
    return Provider.objects.create(name="openai", kind="openai_compatible", preset="openai")


def test_find_prefers_the_deployment_then_the_public_model_then_the_upstream_name(openai: Provider) -> None:
    Price.objects.create(model="gpt-4o", input_per_million="2.50", output_per_million="10", effective_from=date(2025, 1, 1))
    deployment = Price.objects.create(model="gpt-4o-2024-08-06", provider=openai, input_per_million="2",
                                      output_per_million="8", effective_from=date(2025, 1, 1))
    Price.objects.create(model="gpt-4o-2024-08-06", input_per_million="3", output_per_million="9",
                         effective_from=date(2025, 1, 1))
    table = pricing.load_table()
    on = date(2025, 6, 1)

    def found(public: str, provider: str, upstream: str) -> tuple[str, str | None] | None:
        row = table.find(public_model=public, provider=provider, upstream_model=upstream, on=on)
        return None if row is None else (row.model, row.provider.name if row.provider else None)

    assert found("gpt-4o", "openai", "gpt-4o-2024-08-06") == ("gpt-4o-2024-08-06", "openai")
    assert table.find(public_model="gpt-4o", provider="openai", upstream_model="gpt-4o-2024-08-06", on=on) == deployment
    assert found("gpt-4o", "azure", "gpt-4o-2024-08-06") == ("gpt-4o", None)  # another provider's deployment
    assert found("my-alias", "azure", "gpt-4o-2024-08-06") == ("gpt-4o-2024-08-06", None)  # last resort
    assert found("gpt-4o", "openai", "gpt-4o-mini") == ("gpt-4o", None)
    assert found("unknown", "openai", "unknown") is None


def test_a_price_change_mid_month_applies_from_its_day(openai: Provider) -> None:
    Price.objects.create(model="gpt-4o", input_per_million="2.50", output_per_million="10", effective_from=date(2025, 1, 1))
    Price.objects.create(model="gpt-4o", input_per_million="2.00", output_per_million="8", effective_from=date(2025, 3, 15))
    # A deployment price that starts later than the public one does not hide it before its day.
    Price.objects.create(model="gpt-4o", provider=openai, input_per_million="1", output_per_million="4",
                         effective_from=date(2025, 3, 20))
    table = pricing.load_table()

    def input_price(on: date) -> Decimal | None:
        row = table.find(public_model="gpt-4o", provider="openai", upstream_model="gpt-4o", on=on)
        return None if row is None else row.input_per_million

    assert input_price(date(2024, 12, 31)) is None
    assert input_price(date(2025, 3, 14)) == D("2.50")
    assert input_price(date(2025, 3, 15)) == D("2.00")
    assert input_price(date(2025, 3, 19)) == D("2.00")
    assert input_price(date(2025, 3, 20)) == D("1")


def test_load_table_is_one_query(openai: Provider, django_assert_num_queries: DjangoAssertNumQueries) -> None:
    Price.objects.create(model="gpt-4o", input_per_million="2.50", output_per_million="10")
    Price.objects.create(model="gpt-4o", provider=openai, input_per_million="2", output_per_million="8")
    # prices joined to their providers
    with django_assert_num_queries(1):
        table = pricing.load_table()
    assert set(table.rows) == {(None, "gpt-4o"), ("openai", "gpt-4o")}


def test_price_for_caches_the_table_until_forgotten(
    db: None, settings: Settings, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    settings.TOLLGATE_ROUTES_CACHE_SECONDS = 60
    ask = {"public_model": "gpt-4o", "provider": "openai", "upstream_model": "gpt-4o", "on": date(2026, 1, 1)}
    assert pricing.price_for(**ask) is None
    # bulk_create sends no post_save, like a price saved by another process
    Price.objects.bulk_create([Price(model="gpt-4o", input_per_million=D("2.50"), output_per_million=D("10"),
                                     effective_from=date(2025, 1, 1))])
    with django_assert_num_queries(0):
        assert pricing.price_for(**ask) is None  # the cached table predates the row
    pricing.forget()
    row = pricing.price_for(**ask)
    assert row is not None and row.input_per_million == D("2.50")
    settings.TOLLGATE_ROUTES_CACHE_SECONDS = 0
    with django_assert_num_queries(1):
        pricing.price_for(**ask)  # expired at once: reloaded


class CachedTableTests(TestCase):
    def setUp(self) -> None:
        pricing.forget()
        Price.objects.create(model="demo", input_per_million="0", output_per_million="0")

    def tearDown(self) -> None:
        pricing.forget()

    @override_settings(TOLLGATE_ROUTES_CACHE_SECONDS=60)
    async def test_table_is_loaded_once_per_cache_time(self) -> None:
        first = await pricing.table()
        assert await pricing.table() is first
        pricing.forget()
        again = await pricing.table()
        assert again is not first and set(again.rows) == {(None, "demo")}

    @override_settings(TOLLGATE_ROUTES_CACHE_SECONDS=0)
    async def test_table_reloads_when_the_cache_time_is_over(self) -> None:
        first = await pricing.table()
        assert await pricing.table() is not first


def load(*args: str) -> str:
    out = StringIO()
    call_command("loadprices", *args, stdout=out)
    return out.getvalue()


def write(tmp_path: Path, rows: list[dict[str, Any]]) -> str:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(rows))
    return str(path)


def test_bundled_prices_are_strings_and_include_a_free_demo() -> None:
    rows = json.loads(BUNDLED.read_text())
    amounts = [row[name] for row in rows for name in row if name.endswith("_million") or name == "per_request"]
    assert amounts and all(isinstance(amount, str) for amount in amounts)
    assert {"gpt-4o", "claude-sonnet-4-0", "deepseek-chat", "demo"} <= {row["model"] for row in rows}
    assert all(row["note"] for row in rows)


def test_loadprices_loads_the_bundled_list_once(db: None) -> None:
    count = len(json.loads(BUNDLED.read_text()))
    assert "Created %d, updated 0, unchanged 0." % count in load()
    assert "Created 0, updated 0, unchanged %d." % count in load()
    assert Price.objects.filter(provider=None).count() == count
    gpt4o = Price.objects.get(model="gpt-4o")
    assert (gpt4o.input_per_million, gpt4o.output_per_million, gpt4o.cached_input_per_million) == (
        D("2.50"), D("10.00"), D("1.25"))
    assert gpt4o.effective_from == date(2025, 1, 1) and "contract" in gpt4o.note
    demo = Price.objects.get(model="demo")
    assert demo.cost_micros(prompt_tokens=1000, completion_tokens=1000) == 0


def test_loadprices_updates_only_when_asked(db: None, tmp_path: Path) -> None:
    row = {"model": "gpt-4o", "input_per_million": "2.50", "output_per_million": "10.00", "effective_from": "2025-01-01"}
    load(write(tmp_path, [row]))
    cheaper = write(tmp_path, [{**row, "input_per_million": "2.00", "per_request": "0.001"},
                               {**row, "effective_from": "2025-06-01", "input_per_million": "1.50"}])
    out = load(cheaper)
    assert "Created 1, updated 0, unchanged 1." in out and "run with --update" in out
    assert Price.objects.get(model="gpt-4o", effective_from=date(2025, 1, 1)).input_per_million == D("2.50")
    assert "Created 0, updated 1, unchanged 1." in load(cheaper, "--update")
    updated = Price.objects.get(model="gpt-4o", effective_from=date(2025, 1, 1))
    assert (updated.input_per_million, updated.per_request) == (D("2.00"), D("0.001"))


def test_loadprices_drops_this_process_table(db: None) -> None:
    assert pricing.price_for(public_model="gpt-4o", provider="", upstream_model="gpt-4o", on=date(2026, 1, 1)) is None
    load()
    assert pricing.price_for(public_model="gpt-4o", provider="", upstream_model="gpt-4o", on=date(2026, 1, 1)) is not None


GOOD = {"model": "gpt-4o", "input_per_million": "2.50", "output_per_million": "10.00", "effective_from": "2025-01-01"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({**GOOD, "model": "o3", "input_per_million": "abc"}, r"row 2 \(o3\): input_per_million: .*decimal number"),
        ({**GOOD, "model": "o3", "output_per_million": "-1"}, r"row 2 \(o3\): output_per_million must not be negative"),
        ({**GOOD, "model": "o3", "input_per_million": "NaN"}, r"row 2 \(o3\): input_per_million"),
        ({**GOOD, "model": "o3", "input_per_million": 2.5}, r"row 2 \(o3\): input_per_million must be a string"),
        ({**GOOD, "model": "o3", "per_request": "0.0000001"}, r"row 2 \(o3\): per_request: .*6 decimal places"),
        ({**GOOD, "model": "o3", "effective_from": "2025-02-30"}, r"row 2 \(o3\): effective_from"),
        ({**GOOD, "model": "o3", "effective_from": None}, r"row 2 \(o3\): effective_from is missing"),
        ({**GOOD, "model": "o3", "input": "1"}, r"row 2 \(o3\): unknown field 'input'"),
        ({**GOOD, "model": ""}, r"row 2 \(\): model: "),
        (GOOD, r"row 2 \(gpt-4o\): repeats row 1"),
        ("gpt-4o", r"row 2: expected an object"),
    ],
)
def test_loadprices_refuses_a_file_with_a_bad_row_and_writes_nothing(
    db: None, tmp_path: Path, bad: Any, message: str
) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps([GOOD, bad, {**GOOD, "model": "o4-mini"}]))
    with pytest.raises(CommandError, match=message):
        load(str(path))
    assert not Price.objects.exists()


def test_loadprices_explains_a_file_that_is_not_a_list(db: None, tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text('{"model": "gpt-4o"}')
    with pytest.raises(CommandError, match="JSON list"):
        load(str(path))
    path.write_text("[{")
    with pytest.raises(CommandError, match="not valid JSON"):
        load(str(path))
    with pytest.raises(CommandError, match="Cannot read"):
        load(str(tmp_path / "missing.json"))
