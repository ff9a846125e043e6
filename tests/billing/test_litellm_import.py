from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from billing import litellm_prices
from billing.management.commands.loadprices import read_prices
from billing.models import Price
from proxy.models import Provider

D = Decimal
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "litellm_prices.json"
DAY = "2026-11-29"


def selected(providers: tuple[str, ...] = litellm_prices.DEFAULT_PROVIDERS) -> litellm_prices.Report:
    return litellm_prices.select(litellm_prices.parse(FIXTURE.read_text()), providers)


def prices(report: litellm_prices.Report) -> dict[str, dict[str, Decimal]]:
    return {row.model: row.amounts for row in report.rows}


def load(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("loadprices", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_per_token_costs_become_exact_per_million_prices() -> None:
    found = prices(selected())
    assert found["gpt-4o"] == {"input_per_million": D("2.5"), "output_per_million": D("10"),
                               "cached_input_per_million": D("1.25")}
    # 2.8e-08 x 10**6 is 0.028000000000000004 in floats; read as Decimal from the JSON text it is exact.
    assert found["deepseek-chat"]["cached_input_per_million"] == D("0.028")
    assert litellm_prices.text(found["deepseek-chat"]["cached_input_per_million"]) == "0.028"
    assert all(isinstance(v, Decimal) for amounts in found.values() for v in amounts.values())
    # Responses-only models (o3-pro) are served by /v1/responses, so they are priced too.
    assert found["o3-pro"] == {"input_per_million": D("20"), "output_per_million": D("80")}
    # An embedding model's output is free.
    assert found["text-embedding-3-small"] == {"input_per_million": D("0.02"), "output_per_million": D("0")}


def test_cache_reads_and_writes_map_to_cached_input_and_cache_write() -> None:
    found = prices(selected())
    assert found["claude-sonnet-4-5"] == {
        "input_per_million": D("3"), "output_per_million": D("15"),
        "cached_input_per_million": D("0.3"), "cache_write_per_million": D("3.75"),
    }
    bedrock = found["us.anthropic.claude-opus-4-6-v1"]
    assert (bedrock["cache_write_per_million"], bedrock["cached_input_per_million"]) == (D("6.875"), D("0.55"))


def test_per_image_and_per_request_prices_are_kept_per_unit() -> None:
    assert prices(selected())["amazon.titan-embed-image-v1"]["per_image"] == D("0.00006")
    sonar = prices(selected(("perplexity",)))["sonar-small-online"]
    assert sonar["per_request"] == D("0.005") and sonar["input_per_million"] == D("0")


def test_names_lose_the_providers_prefix_and_regional_prices_are_skipped() -> None:
    report = selected()
    assert set(prices(report)) == {
        "gpt-4o", "o3-pro", "text-embedding-3-small", "claude-sonnet-4-5", "deepseek-chat", "gemini-2.5-pro",
        "mistral-tiny-rounded", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "us.anthropic.claude-opus-4-6-v1",
        "amazon.titan-embed-image-v1", "gpt-35-turbo",
    }
    skipped = dict(report.skipped)
    assert skipped["azure/eu/gpt-4o"] == skipped["bedrock/us-east-1/anthropic.claude-instant-v1"] == (
        "a regional or commitment price")
    assert skipped["gpt-image-1"] == "mode image_generation" and skipped["groq/whisper-large-v3"] == (
        "mode audio_transcription")
    assert skipped["together-ai-4.1b-8b"] == "not a model name (a size-class price)"
    # A 0 price would make a router's (or a model priced per clip's) requests free: left unpriced instead.
    assert skipped["openrouter/auto"] == skipped["gemini/gemini-exp-1206"] == "priced at zero"
    assert "sample_spec" not in skipped and "perplexity/sonar-small-online" not in skipped
    assert report.tiered == ["gemini/gemini-2.5-pro"]


def test_the_first_provider_keeps_a_model_name_and_a_different_price_is_warned() -> None:
    report = selected()
    assert prices(report)["gpt-4o"]["input_per_million"] == D("2.5")  # OpenAI's, not Azure's 2.75
    assert dict(report.skipped)["azure/gpt-4o"] == "the same model as an entry taken first"
    assert any(w.startswith("azure/gpt-4o: differs from gpt-4o") for w in report.warnings)
    azure_first = selected(("azure", "openai"))
    assert prices(azure_first)["gpt-4o"]["input_per_million"] == D("2.75")


def test_more_than_six_decimals_round_half_up_with_a_warning() -> None:
    report = selected(("mistral",))
    # 1.2345675e-07 per token is 0.12345675 per million: the column keeps six decimals.
    assert prices(report)["mistral-tiny-rounded"]["input_per_million"] == D("0.123457")
    assert report.warnings == ["mistral/mistral-tiny-rounded: input_cost_per_token 1.2345675E-7 rounded to "
                               "0.123457, six decimals."]
    warnings: list[str] = []
    assert litellm_prices.amount("m", "input_cost_per_token", D("5E-13"), 6, warnings) == D("0.000001")
    assert litellm_prices.amount("m", "input_cost_per_token", D("4.9E-13"), 6, warnings) == D("0")
    assert len(warnings) == 2


def test_bundle_rows_spell_amounts_as_strings() -> None:
    row = next(r for r in selected().rows if r.model == "claude-sonnet-4-5")
    assert litellm_prices.bundle_row(row, effective_from=DAY, note="n") == {
        "model": "claude-sonnet-4-5", "input_per_million": "3.00", "output_per_million": "15.00",
        "cached_input_per_million": "0.30", "cache_write_per_million": "3.75", "effective_from": DAY, "note": "n",
    }
    assert [litellm_prices.text(D(v)) for v in ("0", "0.000001", "0.0375", "2.5", "12")] == [
        "0", "0.000001", "0.0375", "2.50", "12.00"]


def write(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "map.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


GPT = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05}


@pytest.mark.parametrize(
    "data, message",
    [
        ("{not json", "not valid JSON"),
        ('{"gpt-4o": {"input_cost_per_token": NaN}}', "not valid JSON: NaN is not a price"),
        ([GPT], "expected a JSON object of model names"),
        ({"gpt-4o": "cheap"}, "gpt-4o: expected an object of prices, got str"),
        ({"gpt-4o": {**GPT, "input_cost_per_token": "0.0000025"}}, 'input_cost_per_token must be a number, not "0'),
        ({"gpt-4o": {**GPT, "output_cost_per_token": True}}, "output_cost_per_token must be a number, not true"),
        ({"gpt-4o": {**GPT, "cache_read_input_token_cost": [1]}}, "cache_read_input_token_cost must be a number"),
        ({"gpt-4o": {**GPT, "input_cost_per_token": -2.5e-06}}, "input_cost_per_token must not be negative"),
        ({"gpt-4o": {**GPT, "input_cost_per_token": 1000}}, "input_cost_per_token of 1000 is more than a price"),
        ({"gpt-4o": {**GPT, "input_cost_per_image": 1e12}}, "input_cost_per_image of 1000000000000.0 is more than"),
    ],
)
def test_a_bad_price_map_is_a_clear_error_and_writes_nothing(
    db: None, tmp_path: Path, data: Any, message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        load("--litellm", write(tmp_path, data))
    assert not Price.objects.exists()


def test_a_bad_price_of_a_provider_not_asked_for_is_not_read(db: None, tmp_path: Path) -> None:
    path = write(tmp_path, {"gpt-4o": GPT, "odd/model": {"litellm_provider": "odd", "input_cost_per_token": "x"}})
    load("--litellm", path, "--effective-from", DAY)
    assert Price.objects.get().model == "gpt-4o"


def test_bad_options_are_clear_errors(db: None, tmp_path: Path) -> None:
    path = write(tmp_path, {"gpt-4o": GPT})
    for args, message in [
        (("--litellm", str(tmp_path / "missing.json")), "Cannot read"),
        (("--litellm", path, "--effective-from", "2026-02-30"), "give a day as YYYY-MM-DD"),
        (("--litellm", path, "--provider", "nobody"), "No provider is named 'nobody'"),
        (("--litellm", path, "--providers", " , "), "names no provider"),
        (("prices.json", "--litellm", path), "not both"),
        (("--effective-from", DAY), "goes with --litellm"),
    ]:
        with pytest.raises(CommandError, match=message):
            load(*args)


def test_import_creates_exact_prices_and_reports_what_it_skipped(db: None) -> None:
    out, err = load("--litellm", str(FIXTURE), "--effective-from", DAY)
    assert "LiteLLM price map: 11 prices of openai, anthropic, gemini" in out
    assert "Skipped 8 entries (" in out and "a regional or commitment price: 2" in out
    assert "1 models charge more past a prompt size" in out
    assert "Created 11, updated 0, unchanged 0." in out
    assert "Warning: mistral/mistral-tiny-rounded" in err and "Warning: azure/gpt-4o: differs" in err
    claude = Price.objects.get(model="claude-sonnet-4-5")
    assert claude.provider is None and claude.effective_from == date(2026, 11, 29)
    assert (claude.input_per_million, claude.cached_input_per_million, claude.cache_write_per_million) == (
        D("3"), D("0.3"), D("3.75"))
    assert claude.note == "LiteLLM price map, 2026-11-29; public list prices, check your own contract."
    # 1,000 prompt tokens of which 200 written to the cache and 300 read from it, 100 out, in pico-dollars.
    assert claude.cost_picos(prompt_tokens=1000, cached_tokens=300, completion_tokens=100) == (
        700 * 3_000_000 + 300 * 300_000 + 100 * 15_000_000)
    assert Price.objects.get(model="amazon.titan-embed-image-v1").per_image == D("0.00006")


def test_import_is_idempotent_on_the_same_day_and_later(db: None) -> None:
    load("--litellm", str(FIXTURE), "--effective-from", DAY)
    assert "Created 0, updated 0, unchanged 11." in load("--litellm", str(FIXTURE), "--effective-from", DAY)[0]
    # The same prices a month later are the prices in force already: no second row.
    assert "Created 0, updated 0, unchanged 11." in load("--litellm", str(FIXTURE), "--effective-from", "2026-12-29")[0]
    assert Price.objects.count() == 11


def test_a_changed_price_is_a_new_row_from_its_day(db: None, tmp_path: Path) -> None:
    load("--litellm", write(tmp_path, {"gpt-4o": GPT}), "--effective-from", DAY)
    cheaper = write(tmp_path, {"gpt-4o": {**GPT, "input_cost_per_token": 2e-06}})
    assert "Created 1," in load("--litellm", cheaper, "--effective-from", "2027-01-01")[0]
    assert [(p.effective_from.isoformat(), p.input_per_million) for p in Price.objects.order_by("effective_from")] == [
        (DAY, D("2.5")), ("2027-01-01", D("2"))]
    # The same day with another price is left alone unless --update, as for a price list.
    assert "run with --update" in load("--litellm", cheaper, "--effective-from", DAY)[0]
    assert Price.objects.get(effective_from=date(2026, 11, 29)).input_per_million == D("2.5")


def test_dry_run_reports_and_writes_nothing(db: None, tmp_path: Path) -> None:
    out, _ = load("--litellm", str(FIXTURE), "--effective-from", DAY, "--dry-run")
    assert "Dry run: would create 11, update 0, leave 0 unchanged. Nothing was written." in out
    assert not Price.objects.exists()
    bundle = tmp_path / "prices.json"
    out, _ = load("--litellm", str(FIXTURE), "--write-bundle", str(bundle), "--dry-run")
    assert "would add 11" in out and not bundle.exists()


def test_provider_attaches_the_prices_to_its_deployments(db: None) -> None:
    azure = Provider.objects.create(name="azure-eu", kind="azure")
    load("--litellm", str(FIXTURE), "--providers", "azure", "--provider", "azure-eu", "--effective-from", DAY)
    assert {(p.model, p.provider_id) for p in Price.objects.all()} == {("gpt-4o", azure.pk), ("gpt-35-turbo", azure.pk)}
    assert Price.objects.get(model="gpt-4o").input_per_million == D("2.75")


def test_write_bundle_merges_into_a_price_list_that_loads(tmp_path: Path) -> None:
    bundle = tmp_path / "prices.json"
    old = {"model": "gpt-4o", "input_per_million": "2.50", "output_per_million": "10.00",
           "cached_input_per_million": "1.25", "effective_from": "2025-01-01", "note": "kept"}
    stale = {"model": "deepseek-chat", "input_per_million": "0.27", "output_per_million": "1.10",
             "effective_from": "2025-01-01", "note": "older price"}
    bundle.write_text(json.dumps([old, stale]))
    args = ("--litellm", str(FIXTURE), "--write-bundle", str(bundle), "--effective-from", DAY)
    assert "added 10, updated 0, kept 0 that differ; 12 rows in all." in load(*args)[0]
    rows = json.loads(bundle.read_text())
    assert rows[0] == old  # the same prices: the existing row (and its date and note) stays
    assert rows[1] == stale  # a changed price is a new row from its day; the older one stays for past requests
    assert [r["input_per_million"] for r in rows if r["model"] == "deepseek-chat"] == ["0.27", "0.28"]
    assert "added 0, updated 0, kept 0 that differ; 12 rows in all." in load(*args)[0]
    assert len(read_prices(bundle)) == 12
    with pytest.raises(CommandError, match="--provider does not go with --write-bundle"):
        load(*args, "--provider", "x")
