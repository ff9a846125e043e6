"""Request tags: what a tenant labels its requests with (team, feature, environment) to split spend and budget it.

A request's tags come from its ``x-tollgate-tags`` header (comma separated) and its ``metadata`` pairs (as
``key:value``). On the ledger row they are kept in one text column in a stored form, ``,team:search,env:prod,``:
sorted, each between commas, so "rows with tag T" is ``tags__contains=",T,"`` on every database, with no JSON
operator SQLite lacks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_TAGS = 16  # per request
MAX_TAG_LENGTH = 64
MAX_END_USER_LENGTH = 256  # the ledger column's size
# Letters, digits and a few separators: no comma (the stored form's delimiter), no spaces, nothing a CSV or a URL
# would need to quote.
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:=/@+-]{0,63}")


def is_tag(value: str) -> bool:
    return len(value) <= MAX_TAG_LENGTH and TAG.fullmatch(value) is not None


def stored(tags: Iterable[str]) -> str:
    """The stored form of valid tags: sorted, each once, between commas; "" for none."""
    unique = sorted(set(tags))
    return f",{','.join(unique)}," if unique else ""


def parse_stored(value: str) -> list[str]:
    return [tag for tag in value.split(",") if tag]


def needle(tag: str) -> str:
    """What a row's stored tags contain when the row has ``tag``: filter with ``tags__contains=needle(tag)``."""
    return f",{tag},"
