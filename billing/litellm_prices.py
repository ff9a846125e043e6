"""Prices from LiteLLM's price map (model_prices_and_context_window.json): facts read from a file, never fetched.

LiteLLM keys each entry by its own model name (``gemini/gemini-2.5-pro``, ``azure/eu/gpt-4o``) and gives US dollars per
token as JSON floats. Tollgate prices the name a client or upstream uses (``gemini-2.5-pro``) in dollars per million
tokens with six decimals. The numbers are read as Decimal straight from the JSON text, so no float ever rounds them.
https://github.com/BerriAI/litellm/blob/main/model_prices_and_context_window.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from proxy.providers.base import JSONDict

SIX_PLACES = Decimal("0.000001")
# The Price columns' limit: 14 digits, 6 of them decimals.
LARGEST = Decimal("99999999.999999")

# LiteLLM field -> (Price field, scale): per-token costs become per-million prices.
FIELDS: dict[str, tuple[str, int]] = {
    "input_cost_per_token": ("input_per_million", 6),
    "output_cost_per_token": ("output_per_million", 6),
    "cache_read_input_token_cost": ("cached_input_per_million", 6),
    "cache_creation_input_token_cost": ("cache_write_per_million", 6),
    "input_cost_per_request": ("per_request", 0),
    "input_cost_per_image": ("per_image", 0),
}
AMOUNTS = tuple(name for name, _ in FIELDS.values())

# Modes Tollgate serves. LiteLLM's other modes (image generation, audio, rerank, search ...) are priced per image,
# second or query, which a token price cannot hold.
MODES = frozenset({"chat", "completion", "responses", "embedding"})

# LiteLLM also lists higher prices past a prompt size (gemini-2.5-pro above 200k tokens). A row holds one price, so
# the base tier is imported and the entry is reported; a deployment that serves long prompts needs its own price.
TIERED = "_above_"


@dataclass(frozen=True)
class Source:
    """Where one Tollgate provider's prices are in LiteLLM's map."""

    providers: tuple[str, ...]  # LiteLLM's litellm_provider values
    prefix: str  # taken off LiteLLM's key to give the model name
    bare_keys: bool = True  # keys without the prefix name models too (together_ai's are size classes)
    slash_is_region: bool = False  # after the prefix, "eu/gpt-4o" is a regional price, not a model name


# Tollgate's preset and kind names; any other name is taken as a LiteLLM provider name. In this order, so a vendor's
# own price of a model name comes before a reseller's (Azure's gpt-4o, Groq's and Together's openai/gpt-oss-120b).
SOURCES: dict[str, Source] = {
    "openai": Source(("openai",), ""),
    "anthropic": Source(("anthropic",), ""),
    "gemini": Source(("gemini",), "gemini/"),
    "mistral": Source(("mistral",), "mistral/"),
    "deepseek": Source(("deepseek",), "deepseek/"),
    "groq": Source(("groq",), "groq/"),
    "together": Source(("together_ai",), "together_ai/", bare_keys=False),
    "bedrock": Source(("bedrock", "bedrock_converse"), "bedrock/", slash_is_region=True),
    "azure": Source(("azure",), "azure/", slash_is_region=True),
    "openrouter": Source(("openrouter",), "openrouter/"),
}
DEFAULT_PROVIDERS = tuple(SOURCES)


class PriceMapError(ValueError):
    """The file is not a LiteLLM price map Tollgate can read; the message names the entry and field."""


@dataclass(frozen=True)
class Row:
    """One model's prices, in dollars per million tokens (or per request / image), exact to six decimals."""

    model: str
    key: str  # LiteLLM's key, for the report
    amounts: dict[str, Decimal]


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (LiteLLM key, why)
    warnings: list[str] = field(default_factory=list)  # rounded amounts, conflicting entries
    tiered: list[str] = field(default_factory=list)  # keys with higher prices past a prompt size


def parse(text: str) -> JSONDict:
    """Return the price map with every number as a Decimal (ints too). Raises PriceMapError."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a price")

    try:
        data = json.loads(text, parse_float=Decimal, parse_int=Decimal, parse_constant=refuse)
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise PriceMapError(f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PriceMapError("expected a JSON object of model names to their prices (LiteLLM's price map).")
    return data


def source_for(name: str) -> Source:
    return SOURCES.get(name) or Source((name,), name + "/")


def select(data: JSONDict, providers: tuple[str, ...] = DEFAULT_PROVIDERS) -> Report:
    """Return the rows of the given providers' chat, completion, responses and embedding models, and what was
    skipped and why. When two entries give the same model name, the first (in provider order) wins. Raises
    PriceMapError for an entry of those providers with a bad price."""
    report = Report()
    taken: dict[str, Row] = {}
    for name in providers:
        source = source_for(name)
        for key, entry in data.items():
            if key == "sample_spec":
                continue  # LiteLLM's description of the format, not a model
            if not isinstance(entry, dict):
                raise PriceMapError(f"{key}: expected an object of prices, got {type(entry).__name__}.")
            if entry.get("litellm_provider") not in source.providers:
                continue
            model, why = model_name(key, source)
            if model is None:
                report.skipped.append((key, why))
                continue
            mode = entry.get("mode", "chat")
            if not isinstance(mode, str) or mode not in MODES:
                report.skipped.append((key, f"mode {mode}"))
                continue
            row, why = convert(key, model, entry, report)
            if row is None:
                report.skipped.append((key, why))
            elif model in taken:
                first = taken[model]
                report.skipped.append((key, "the same model as an entry taken first"))
                if first.amounts != row.amounts:
                    report.warnings.append(f"{key}: differs from {first.key}; kept {first.key}'s prices for {model}.")
            else:
                taken[model] = row
                report.rows.append(row)
    return report


def model_name(key: str, source: Source) -> tuple[str | None, str]:
    if source.prefix and key.startswith(source.prefix):
        name = key[len(source.prefix):]
    elif source.bare_keys:
        name = key
    else:
        return None, "not a model name (a size-class price)"
    if source.slash_is_region and "/" in name:
        return None, "a regional or commitment price"
    if not name or len(name) > 200:
        return None, "not a model name Tollgate can store"
    return name, ""


def convert(key: str, model: str, entry: JSONDict, report: Report) -> tuple[Row | None, str]:
    """Return the row for one entry, or None and why it has no token price. Raises PriceMapError for a bad value."""
    if entry.get("input_cost_per_token") is None:
        return None, "no price per token"
    if entry.get("output_cost_per_token") is None and entry.get("mode") != "embedding":
        return None, "no output price per token"
    amounts = {"output_per_million": Decimal(0)}  # an embedding model's output is free
    for theirs, (ours, scale) in FIELDS.items():
        if entry.get(theirs) is not None:
            amounts[ours] = amount(key, theirs, entry[theirs], scale, report.warnings)
    if not any(amounts.values()):
        # LiteLLM writes 0 for routers (openrouter/auto) and models priced another way as well as for free ones.
        # Unpriced, the model's rows are flagged and TOLLGATE_UNPRICED=deny can refuse it; at 0 it would pass free.
        return None, "priced at zero"
    if any(TIERED in name and name.endswith("tokens") and "cost" in name for name in entry):
        report.tiered.append(key)
    return Row(model=model, key=key, amounts=amounts), ""


def amount(key: str, name: str, raw: object, scale: int, warnings: list[str]) -> Decimal:
    """Return the price scaled to Tollgate's unit, to six decimals. Raises PriceMapError for a value no price can be."""
    if isinstance(raw, bool) or not isinstance(raw, Decimal):
        raise PriceMapError(f"{key}: {name} must be a number, not {json.dumps(raw, default=str)}.")
    if not raw.is_finite() or raw < 0:
        raise PriceMapError(f"{key}: {name} must not be negative.")
    value = raw.scaleb(scale)
    if value > LARGEST:
        raise PriceMapError(f"{key}: {name} of {raw} is more than a price can hold ({LARGEST} per unit).")
    rounded = value.quantize(SIX_PLACES, rounding=ROUND_HALF_UP)
    if rounded != value:
        # Under half a millionth of a dollar per million tokens: rounded half up, as the column holds six decimals.
        warnings.append(f"{key}: {name} {raw} rounded to {text(rounded)}, six decimals.")
    return rounded


def text(value: Decimal) -> str:
    """Return a price as the bundle spells it: "0", "0.075", "2.50", "10.00"."""
    if value == 0:
        return "0"
    places = max(2, -value.normalize().as_tuple().exponent)  # type: ignore[operator]
    return f"{value:.{places}f}"


def bundle_row(row: Row, *, effective_from: str, note: str) -> JSONDict:
    """Return a row in billing/data/prices.json's format: every amount a string."""
    amounts = {name: text(row.amounts[name]) for name in AMOUNTS if name in row.amounts}
    return {"model": row.model, **amounts, "effective_from": effective_from, "note": note}


def same_prices(a: JSONDict, b: JSONDict) -> bool:
    """Whether two bundle rows charge the same (a missing optional amount is the column's default)."""

    def amounts(row: JSONDict) -> tuple[Decimal | None, ...]:
        defaults = {"per_request": "0", "per_image": "0", "output_per_million": "0"}
        values = (row.get(name, defaults.get(name)) for name in AMOUNTS)
        return tuple(None if v is None else Decimal(v) for v in values)

    return amounts(a) == amounts(b)


@dataclass
class Merged:
    rows: list[JSONDict]
    added: int = 0
    updated: int = 0
    kept: int = 0  # a row of the same model and day that differs, left as it was (no update asked)


def merge(bundle: list[JSONDict], new: list[JSONDict], *, update: bool = False) -> Merged:
    """Return the bundle with the new rows added where a model's price is new or changed. A model whose price in
    force on the new row's day is the same keeps its row (and its date); a row of the same model and day that
    differs is overwritten only with update."""
    merged = Merged(rows=list(bundle))
    for row in new:
        rows = merged.rows
        same_day = next((i for i, r in enumerate(rows)
                         if r["model"] == row["model"] and r["effective_from"] == row["effective_from"]), None)
        earlier = [r for r in rows if r["model"] == row["model"] and r["effective_from"] < row["effective_from"]]
        in_force = max(earlier, key=lambda r: str(r["effective_from"]), default=None)
        if same_day is not None:
            if same_prices(rows[same_day], row):
                continue
            if update:
                rows[same_day] = row
                merged.updated += 1
            else:
                merged.kept += 1
        elif in_force is None or not same_prices(in_force, row):
            rows.append(row)
            merged.added += 1
    return merged
