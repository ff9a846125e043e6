"""Which Price applies to a request: a small table read on every request, so each process keeps it in memory.

Like the routing table, a process reloads it once it is older than TOLLGATE_ROUTES_CACHE_SECONDS; saving or
deleting a price drops every process's copy within a second (billing/apps.py, gateway_site/changes.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date

from django.conf import settings

from proxy.db import db_step

from .models import Price

PriceKey = tuple[str | None, str]  # (provider name, or None for a public model price; model name)


@dataclass(frozen=True)
class PriceTable:
    rows: dict[PriceKey, tuple[Price, ...]]  # newest effective_from first
    loaded_at: float
    per_image: bool = False  # some price charges per image: only then are a request's images counted when unsized

    def find(self, *, public_model: str, provider: str, upstream_model: str, on: date) -> Price | None:
        """The price of a deployment's model, else of the public model, else of the upstream model name."""
        return (
            self.newest((provider, upstream_model), on)
            or self.newest((None, public_model), on)
            or self.newest((None, upstream_model), on)
        )

    def newest(self, key: PriceKey, on: date) -> Price | None:
        # Newest first, so the current price is almost always the first row looked at.
        for price in self.rows.get(key, ()):
            if price.effective_from <= on:
                return price
        return None

    def is_fresh(self) -> bool:
        return time.monotonic() - self.loaded_at < settings.TOLLGATE_ROUTES_CACHE_SECONDS


_table: PriceTable | None = None


def load_table() -> PriceTable:
    """Return a fresh price table read from the database in one query."""
    rows: dict[PriceKey, list[Price]] = {}
    for price in Price.objects.select_related("provider").order_by("-effective_from"):
        key = (price.provider.name if price.provider else None, price.model)
        rows.setdefault(key, []).append(price)
    return PriceTable(rows={key: tuple(prices) for key, prices in rows.items()}, loaded_at=time.monotonic(),
                      per_image=any(price.per_image for prices in rows.values() for price in prices))


aload_table = db_step(load_table)


async def table() -> PriceTable:
    """Return this process's price table, reloading it when older than the cache time."""
    global _table
    current = _table
    if current is None or not current.is_fresh():
        current = _table = await aload_table()
    return current


def cached_table() -> PriceTable:
    """The same table as table(), for sync code; never call it on the event loop."""
    global _table
    current = _table
    if current is None or not current.is_fresh():
        current = _table = load_table()
    return current


def price_for(*, public_model: str, provider: str, upstream_model: str, on: date) -> Price | None:
    """Return the price that applies to the request, or None when the model has none."""
    return cached_table().find(public_model=public_model, provider=provider, upstream_model=upstream_model, on=on)


def forget() -> None:
    global _table
    _table = None
