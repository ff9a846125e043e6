from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from io import StringIO

from django.core.management import call_command

from billing.management.commands.loadprices import AMOUNTS, BUNDLED, read_prices
from billing.models import Price
from proxy.models import Provider
from proxy.providers.catalog import DOCUMENTED_MODELS, SELF_HOSTED
from proxy.providers.compatible import PRESETS

ROWS = json.loads(BUNDLED.read_text(encoding="utf-8"))


def test_every_vendor_preset_and_kind_lists_its_documented_models() -> None:
    vendors = set(PRESETS) - SELF_HOSTED
    kinds = {Provider.Kind.ANTHROPIC, Provider.Kind.AZURE, Provider.Kind.BEDROCK}
    assert vendors | kinds <= set(DOCUMENTED_MODELS)
    assert {"openai", "anthropic", "azure", "gemini", "bedrock", "mistral", "deepseek", "groq", "together",
            "openrouter"} <= set(DOCUMENTED_MODELS)
    assert all(models and len(set(models)) == len(models) for models in DOCUMENTED_MODELS.values())


def test_every_documented_model_has_a_bundled_price() -> None:
    priced = {row["model"] for row in ROWS}
    unpriced = {vendor: [m for m in models if m not in priced] for vendor, models in DOCUMENTED_MODELS.items()}
    assert {vendor: models for vendor, models in unpriced.items() if models} == {}


def test_the_bundle_has_hundreds_of_rows_each_a_valid_price() -> None:
    assert len(ROWS) >= 500
    prices = read_prices(BUNDLED)  # refuses unknown fields, numbers that are not strings, repeated rows
    for price in prices:
        price.full_clean(validate_unique=False, validate_constraints=False)
    assert len(prices) == len(ROWS)


def test_no_model_is_priced_twice_from_the_same_day() -> None:
    repeated = [key for key, n in Counter((row["model"], row["effective_from"]) for row in ROWS).items() if n > 1]
    assert repeated == []


def test_amounts_have_at_most_six_decimals_and_are_never_negative() -> None:
    for row in ROWS:
        for name in AMOUNTS:
            if name in row:
                value = Decimal(row[name])
                assert value.is_finite() and value >= 0, row
                assert value == value.quantize(Decimal("0.000001")), row


def test_every_row_names_its_source_and_says_to_check_the_contract() -> None:
    for row in ROWS:
        assert row["model"] == "demo" or "contract" in row["note"], row
    from_litellm = [row for row in ROWS if row["note"].startswith("LiteLLM price map")]
    assert len(from_litellm) > 400


def test_anthropic_models_price_cache_writes_and_reads() -> None:
    by_model = {row["model"]: row for row in ROWS}
    for model in DOCUMENTED_MODELS["anthropic"]:
        row = by_model[model]
        assert Decimal(row["cache_write_per_million"]) > Decimal(row["input_per_million"]), model
        assert Decimal(row["cached_input_per_million"]) < Decimal(row["input_per_million"]), model


def test_loadprices_and_a_fresh_start_load_the_whole_bundle(db: None) -> None:
    out = StringIO()
    call_command("ensuredemo", stdout=out)
    assert f"loaded {len(ROWS)} bundled prices" in out.getvalue()
    assert Price.objects.filter(provider=None).count() == len(ROWS)
    sonnet = Price.objects.get(model="claude-sonnet-4-5")
    assert (sonnet.cached_input_per_million, sonnet.cache_write_per_million) == (Decimal("0.3"), Decimal("3.75"))
    out = StringIO()
    call_command("loadprices", stdout=out)
    assert f"Created 0, updated 0, unchanged {len(ROWS)}." in out.getvalue()
