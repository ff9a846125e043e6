"""What the management API reads: JSON bodies the database can store, and pages of a size it can fetch."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import IO, Any

from rest_framework import exceptions, parsers
from rest_framework.pagination import LimitOffsetPagination

# PostgreSQL refuses NUL in text and JSON columns, and no column stores half a surrogate pair.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_path(data: object) -> str | None:
    """The JSON path of the first key or string that holds NUL or a lone surrogate, or None."""
    stack: list[tuple[str, object]] = [("", data)]
    while stack:  # not recursive: the parser accepts nesting as deep as its own recursion limit
        path, item = stack.pop()
        if isinstance(item, str):
            if UNSTORABLE.search(item):
                return path or "the body"
        elif isinstance(item, Mapping):
            for key, value in item.items():
                name = UNSTORABLE.sub("?", key)  # the path is in the error message, which must encode as UTF-8
                inner = f"{path}.{name}" if path else name
                if UNSTORABLE.search(key):
                    return inner
                stack.append((inner, value))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", value) for i, value in enumerate(item))
    return None


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing (400) strings no column can store and nesting too deep to parse."""

    def parse(self, stream: IO[Any], media_type: str | None = None,
              parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
        where = unstorable_path(data)
        if where is not None:
            raise exceptions.ParseError(f"JSON parse error - {where} holds a NUL character or a lone surrogate.")
        return data


class Pagination(LimitOffsetPagination):
    """``limit``/``offset`` pages; a larger ``limit`` is cut to ``max_limit`` rather than reaching the database."""

    max_limit = 1000
