from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from audit.services import record_saved
from gateway_site import changes
from billing import litellm_prices
from billing.models import Price
from proxy.models import Provider

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "prices.json"
AMOUNTS = ("input_per_million", "output_per_million", "cached_input_per_million", "cache_write_per_million",
           "per_request", "per_image")
REQUIRED = ("model", "input_per_million", "output_per_million", "effective_from")
FIELDS = ("model", "effective_from", *AMOUNTS, "note")
UPDATED = (*AMOUNTS, "note")
NOTE = "LiteLLM price map, {day}; public list prices, check your own contract."


@dataclass
class Outcome:
    created: list[Price] = field(default_factory=list)
    updated: list[Price] = field(default_factory=list)
    unchanged: int = 0
    kept: int = 0  # differ from the file, but --update was not given


class Command(BaseCommand):
    help = (
        "Load a price list (by default the bundled public list prices) as prices of public models. A model already "
        "priced from the same day is left alone unless --update is given. The file is loaded whole or not at all. "
        "With --litellm, read LiteLLM's price map (model_prices_and_context_window.json) instead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", nargs="?", help="A JSON list of prices (default: the bundled list)")
        parser.add_argument(
            "--update", action="store_true",
            help="Overwrite the amounts and note of prices that exist, including ones usage records point to",
        )
        parser.add_argument("--litellm", metavar="FILE", help="Import LiteLLM's price map JSON from this file")
        parser.add_argument(
            "--providers", default=",".join(litellm_prices.DEFAULT_PROVIDERS),
            help="With --litellm: whose models to take, comma-separated, in order of precedence (Tollgate's preset "
                 "names, or LiteLLM's provider names); default: %(default)s",
        )
        parser.add_argument("--provider", metavar="NAME",
                            help="With --litellm: price these models for this Tollgate provider's deployments only")
        parser.add_argument("--effective-from", metavar="YYYY-MM-DD", help="With --litellm: the prices' day (today)")
        parser.add_argument("--note", help="With --litellm: the rows' note (default names the price map and day)")
        parser.add_argument("--write-bundle", metavar="PATH",
                            help="With --litellm: merge the prices into this price list file instead of the database")
        parser.add_argument("--dry-run", action="store_true", help="Report what would change and write nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = int(options["verbosity"])
        if options["litellm"]:
            if options["path"]:
                raise CommandError("Give either a price list or --litellm FILE, not both.")
            self.import_litellm(Path(options["litellm"]), options)
            return
        for name in ("provider", "effective_from", "note", "write_bundle"):
            if options[name]:
                raise CommandError(f"--{name.replace('_', '-')} goes with --litellm FILE.")
        prices = read_prices(Path(options["path"] or BUNDLED))
        if options["dry_run"]:
            self.report_outcome(plan_prices(prices, update=options["update"]), dry_run=True)
            return
        self.report_outcome(save_prices(prices, update=options["update"]), dry_run=False)

    def import_litellm(self, path: Path, options: dict[str, Any]) -> None:
        day = parse_day(options["effective_from"])
        note = options["note"] or NOTE.format(day=day.isoformat())
        providers = tuple(name.strip() for name in options["providers"].split(",") if name.strip())
        if not providers:
            raise CommandError("--providers names no provider.")
        try:
            report = litellm_prices.select(litellm_prices.parse(read_text(path)), providers)
        except litellm_prices.PriceMapError as e:
            raise CommandError(f"{path}: {e}") from None
        self.report_litellm(report, providers)
        if options["write_bundle"]:
            if options["provider"]:
                raise CommandError("The bundled list prices public models: --provider does not go with --write-bundle.")
            self.write_bundle(Path(options["write_bundle"]), report, day=day, note=note, update=options["update"],
                              dry_run=options["dry_run"])
            return
        provider = find_provider(options["provider"])
        prices = [litellm_price(row, provider=provider, day=day, note=note) for row in report.rows]
        if options["dry_run"]:
            self.report_outcome(plan_prices(prices, update=options["update"], skip_current=True), dry_run=True)
            return
        self.report_outcome(save_prices(prices, update=options["update"], skip_current=True), dry_run=False)

    def report_litellm(self, report: litellm_prices.Report, providers: tuple[str, ...]) -> None:
        reasons = Counter(why for _, why in report.skipped)
        self.stdout.write(f"LiteLLM price map: {len(report.rows)} prices of {', '.join(providers)}.")
        if report.skipped:
            summary = "; ".join(f"{why}: {n}" for why, n in reasons.most_common())
            self.stdout.write(f"Skipped {len(report.skipped)} entries ({summary}).")
        for key, why in report.skipped if self.verbosity > 1 else ():
            self.stdout.write(f"  skipped {key}: {why}")
        for warning in report.warnings:
            self.stderr.write(f"Warning: {warning}")
        if report.tiered:
            self.stdout.write(
                f"{len(report.tiered)} models charge more past a prompt size (e.g. above 200k tokens); their base "
                "price was imported. Give deployments that serve long prompts their own price."
            )
        for key in report.tiered if self.verbosity > 1 else ():
            self.stdout.write(f"  tiered: {key}")

    def write_bundle(self, path: Path, report: litellm_prices.Report, *, day: date, note: str, update: bool,
                     dry_run: bool) -> None:
        bundle = load_list(path) if path.exists() else []
        new = [litellm_prices.bundle_row(row, effective_from=day.isoformat(), note=note) for row in report.rows]
        merged = litellm_prices.merge(bundle, new, update=update)
        text = "[\n" + ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in merged.rows) + "\n]\n"
        check_rows(json.loads(text))  # the file must load as it is written
        self.stdout.write(f"{path}: {'would add' if dry_run else 'added'} {merged.added}, updated {merged.updated}, "
                          f"kept {merged.kept} that differ; {len(merged.rows)} rows in all.")
        if merged.kept:
            self.stdout.write("Rows of the same model and day were kept as they were; run with --update to overwrite.")
        if not dry_run:
            path.write_text(text, encoding="utf-8")

    def report_outcome(self, outcome: Outcome, *, dry_run: bool) -> None:
        if dry_run:
            self.stdout.write(f"Dry run: would create {len(outcome.created)}, update {len(outcome.updated)}, "
                              f"leave {outcome.unchanged + outcome.kept} unchanged. Nothing was written.")
            return
        changes.announce("prices")  # bulk writes send no signals
        self.stdout.write(
            f"Created {len(outcome.created)}, updated {len(outcome.updated)}, unchanged {outcome.unchanged + outcome.kept}."
        )
        if outcome.kept:
            self.stdout.write(f"{outcome.kept} of the unchanged differ from the file; run with --update to overwrite them.")
        within = "a second" if settings.REDIS_URL else f"{settings.TOLLGATE_ROUTES_CACHE_SECONDS} s"
        self.stdout.write(f"Running gateways use the new prices within {within}.")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise CommandError(f"Cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{path} is not UTF-8 text.") from None


def parse_day(raw: str | None) -> date:
    if raw is None:
        return timezone.now().date()
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise CommandError(f"--effective-from {raw!r}: give a day as YYYY-MM-DD.") from None


def find_provider(name: str | None) -> Provider | None:
    if name is None:
        return None
    provider = Provider.objects.filter(name=name).first()
    if provider is None:
        raise CommandError(f"No provider is named {name!r}; see the admin's Providers page.")
    return provider


def litellm_price(row: litellm_prices.Row, *, provider: Provider | None, day: date, note: str) -> Price:
    price = Price(model=row.model, provider=provider, effective_from=day, note=note, **row.amounts)
    try:
        price.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as e:
        problems = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in e.message_dict.items())
        raise CommandError(f"{row.key}: {problems}") from None
    return price


def load_list(path: Path) -> list[Any]:
    try:
        # parse_float keeps a stray JSON number exact until it is refused below.
        rows = json.loads(read_text(path), parse_float=Decimal)
    except json.JSONDecodeError as e:
        raise CommandError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(rows, list):
        raise CommandError(f"{path} must hold a JSON list of prices.")
    return rows


def read_prices(path: Path) -> list[Price]:
    """Return the file's rows as unsaved prices. Raises CommandError naming the first bad row."""
    return check_rows(load_list(path))


def check_rows(rows: list[Any]) -> list[Price]:
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


def plan_prices(prices: list[Price], *, update: bool, skip_current: bool = False) -> Outcome:
    """Return what saving the prices would do. With skip_current, a price equal to the one already in force on its
    day counts as unchanged, so importing the same prices again on a later day adds nothing."""
    existing: dict[tuple[str, int | None], list[Price]] = {}
    for p in Price.objects.filter(model__in={p.model for p in prices}).order_by("effective_from"):
        existing.setdefault((p.model, p.provider_id), []).append(p)
    outcome = Outcome()
    for price in prices:
        rows = existing.get((price.model, price.provider_id), [])
        current = next((p for p in rows if p.effective_from == price.effective_from), None)
        in_force = [p for p in rows if p.effective_from < price.effective_from]
        if current is None:
            if skip_current and in_force and same_amounts(in_force[-1], price):
                outcome.unchanged += 1
            else:
                outcome.created.append(price)
        elif all(getattr(current, name) == getattr(price, name) for name in UPDATED):
            outcome.unchanged += 1
        elif update:
            for name in UPDATED:
                setattr(current, name, getattr(price, name))
            outcome.updated.append(current)
        else:
            outcome.kept += 1
    return outcome


def same_amounts(a: Price, b: Price) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in AMOUNTS)


@transaction.atomic
def save_prices(prices: list[Price], *, update: bool, skip_current: bool = False) -> Outcome:
    """Create the prices that are new, and with update overwrite the ones that differ. Returns what happened."""
    outcome = plan_prices(prices, update=update, skip_current=skip_current)
    before = Price.objects.in_bulk([price.pk for price in outcome.updated])
    Price.objects.bulk_create(outcome.created)
    Price.objects.bulk_update(outcome.updated, UPDATED)
    # Bulk writes send no signals: the audit entries are written here, one per price created or changed.
    record_saved(rows=[*((None, price) for price in outcome.created),
                       *((before[price.pk], price) for price in outcome.updated)])
    return outcome
