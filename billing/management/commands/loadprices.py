from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from gateway_site import changes
from billing.models import Price

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "prices.json"
AMOUNTS = ("input_per_million", "output_per_million", "cached_input_per_million", "per_request")
REQUIRED = ("model", "input_per_million", "output_per_million", "effective_from")
FIELDS = ("model", "effective_from", *AMOUNTS, "note")
UPDATED = (*AMOUNTS, "note")


@dataclass
class Outcome:
    created: list[Price] = field(default_factory=list)
    updated: list[Price] = field(default_factory=list)
    unchanged: int = 0
    kept: int = 0  # differ from the file, but --update was not given


class Command(BaseCommand):
    help = (
        "Load a price list (by default the bundled public list prices) as prices of public models. A model already "
        "priced from the same day is left alone unless --update is given. The file is loaded whole or not at all."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", nargs="?", default=str(BUNDLED), help="A JSON list of prices")
        parser.add_argument(
            "--update", action="store_true",
            help="Overwrite the amounts and note of prices that exist, including ones usage records point to",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        outcome = save_prices(read_prices(Path(options["path"])), update=options["update"])
        changes.announce("prices")  # bulk writes send no signals
        self.stdout.write(
            f"Created {len(outcome.created)}, updated {len(outcome.updated)}, unchanged {outcome.unchanged + outcome.kept}."
        )
        if outcome.kept:
            self.stdout.write(f"{outcome.kept} of the unchanged differ from the file; run with --update to overwrite them.")
        within = "a second" if settings.REDIS_URL else f"{settings.TOLLGATE_ROUTES_CACHE_SECONDS} s"
        self.stdout.write(f"Running gateways use the new prices within {within}.")


def read_prices(path: Path) -> list[Price]:
    """Return the file's rows as unsaved prices. Raises CommandError naming the first bad row."""
    try:
        # parse_float keeps a stray JSON number exact until it is refused below.
        rows = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except OSError as e:
        raise CommandError(f"Cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise CommandError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(rows, list):
        raise CommandError(f"{path} must hold a JSON list of prices.")
    prices, seen = [], {}
    for number, row in enumerate(rows, start=1):
        price = parse_row(number, row)
        first = seen.setdefault((price.model, price.effective_from), number)
        if first != number:
            raise CommandError(f"row {number} ({price.model}): repeats row {first} (same model and effective_from).")
        prices.append(price)
    return prices


def parse_row(number: int, row: object) -> Price:
    if not isinstance(row, dict):
        raise CommandError(f"row {number}: expected an object with a model and its prices.")
    label = f"row {number} ({row.get('model', 'no model')})"
    unknown = sorted(set(row) - set(FIELDS))
    missing = [name for name in REQUIRED if row.get(name) is None]
    if unknown or missing:
        problems = [f"unknown field {name!r}" for name in unknown] + [f"{name} is missing" for name in missing]
        raise CommandError(f"{label}: {'; '.join(problems)}.")
    values: dict[str, Any] = {}
    for name in FIELDS:
        raw = row.get(name)
        if raw is None:
            continue  # optional: the model's default (no cached price, nothing per request, no note)
        if not isinstance(raw, str):
            raise CommandError(f'{label}: {name} must be a string, e.g. "2.50" or "2025-01-01", never a number.')
        try:
            values[name] = Price._meta.get_field(name).clean(raw, None)
        except ValidationError as e:
            raise CommandError(f"{label}: {name}: {' '.join(e.messages)}") from None
        if name in AMOUNTS and values[name] < 0:
            raise CommandError(f"{label}: {name} must not be negative.")
    return Price(provider=None, **values)


@transaction.atomic
def save_prices(prices: list[Price], *, update: bool) -> Outcome:
    """Create the prices that are new, and with update overwrite the ones that differ. Returns what happened."""
    existing = {
        (p.model, p.effective_from): p
        for p in Price.objects.filter(provider=None, model__in={p.model for p in prices})
    }
    outcome = Outcome()
    for price in prices:
        current = existing.get((price.model, price.effective_from))
        if current is None:
            outcome.created.append(price)
        elif all(getattr(current, name) == getattr(price, name) for name in UPDATED):
            outcome.unchanged += 1
        elif update:
            for name in UPDATED:
                setattr(current, name, getattr(price, name))
            outcome.updated.append(current)
        else:
            outcome.kept += 1
    Price.objects.bulk_create(outcome.created)
    Price.objects.bulk_update(outcome.updated, UPDATED)
    return outcome
