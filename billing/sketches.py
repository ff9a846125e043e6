"""A small mergeable summary of a latency distribution, so day percentiles come from hour rollups, not the ledger.

Each hour rollup keeps, per group, how many requests fell in each logarithmic bin of latency (and of time to first
byte): bin k holds the values in (GAMMA ** (k - 1), GAMMA ** k], and 0 ms has a bin of its own. Adding the hours'
counts bin by bin gives the day's counts exactly, and the day's percentile is read from them by the same rank rule as
PostgreSQL's percentile_disc: the bin that holds the ceil(fraction * n)-th smallest value.

Error bound: the value reported for a bin is 2 * GAMMA ** k / (GAMMA + 1), within ALPHA (1 %) of every value in the bin,
so a day percentile is within 1 % (and rounding to a whole ms) of the exact one; values under 50 ms come out exact.
It is then clamped between the smallest and the largest of that percentile over the day's hours (the exact day
percentile always lies there), so a group served in a single hour has its exact figures. This is the DDSketch
construction (Masson, Rim and Lee, VLDB 2019); a sketch for a group-hour holds a few hundred numbers at most.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from django.db.models import Func, IntegerField

ALPHA = 0.01  # the relative error bound
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
ZERO = -1  # the bin of 0 ms

Sketch = dict[str, int]  # bin (as a JSON object key) -> how many values fell in it


def bin_of(value: int) -> int:
    return ZERO if value <= 0 else math.ceil(math.log(value) / LOG_GAMMA)


def value_of(bin_: int) -> int:
    return 0 if bin_ == ZERO else round(2 * GAMMA ** bin_ / (GAMMA + 1))


class Bin(Func):
    """bin_of() in PostgreSQL, with the same libm log, so both sides put a value in the same bin."""

    template = f"CASE WHEN %(expressions)s > 0 THEN ceil(ln((%(expressions)s)::float8) / {LOG_GAMMA!r})::int ELSE {ZERO} END"
    output_field = IntegerField()


def of(values: Iterable[int]) -> Sketch:
    sketch: Sketch = {}
    for value in values:
        key = str(bin_of(value))
        sketch[key] = sketch.get(key, 0) + 1
    return sketch


def merge(into: Sketch, other: Sketch) -> None:
    for key, count in other.items():
        into[key] = into.get(key, 0) + count


def quantile(sketch: Sketch, fraction: float, *, low: int | None = None, high: int | None = None) -> int | None:
    """The fraction's percentile of the sketched values (percentile_disc's rank), clamped to [low, high] when given;
    None for an empty sketch."""
    total = sum(sketch.values())
    if not total:
        return None
    rank = max(1, -(-int(fraction * 1000) * total // 1000))  # ceil(fraction * n), in integers, as discrete() does
    seen = 0
    for bin_ in sorted(int(key) for key in sketch):
        seen += sketch[str(bin_)]
        if seen >= rank:
            value = value_of(bin_)
            break
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    return value
