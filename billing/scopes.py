"""A budget's narrower scopes: which requests and which ledger rows a project, model glob, tag or end-user budget covers.

The gate matches a request in memory and the ledger is filtered in SQL; both read one regular expression built here
from the model glob, so they can never disagree. The expression uses only what Python's ``re`` (SQLite's REGEXP in
Django) and PostgreSQL's ``~`` read alike: anchors, ``.``, ``.*`` and bracket classes of plain characters.
"""

from __future__ import annotations

import re

from django.db.models import Q

from .tags import needle

MAX_GLOB_LENGTH = 200  # the column's size
WILDCARDS = frozenset("*?[")
# What a bracket class may hold: the characters of route names, "-" for ranges and "!" to negate, as fnmatch reads them.
CLASS = re.compile(r"!?[A-Za-z0-9._:/@+-]+")


class BadGlob(ValueError):
    pass


def is_glob(model: str) -> bool:
    return any(c in WILDCARDS for c in model)


def glob_regex(glob: str) -> str:
    """The anchored regular expression matching what ``fnmatch.fnmatchcase(name, glob)`` matches. Raises BadGlob."""
    if not glob or len(glob) > MAX_GLOB_LENGTH:
        raise BadGlob(f"A model pattern has 1 to {MAX_GLOB_LENGTH} characters.")
    if any(c.isspace() or not c.isprintable() for c in glob):
        raise BadGlob("A model pattern has no spaces or control characters.")
    out, i = ["^"], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = glob.find("]", i + 1)
            inside = glob[i + 1:end] if end > 0 else ""
            if not CLASS.fullmatch(inside) or inside == "!":
                raise BadGlob("A [...] class in a model pattern is closed and holds letters, digits, ranges "
                              "such as [a-z], or ! first to negate.")
            if inside.startswith("-") or inside.endswith("-") or "--" in inside:
                raise BadGlob("A range in a model pattern's [...] class has a character on each side of '-'.")
            negated = inside.startswith("!")
            body = inside[1:] if negated else inside
            # Inside a class these characters are literal in both dialects; "-" makes ranges in both, as in fnmatch.
            out.append(f"[{'^' if negated else ''}{body}]")
            i = end
        elif c == "]":
            raise BadGlob("A model pattern has a ']' without its '['.")
        else:
            out.append(literal(c))
        i += 1
    out.append("$")
    return "".join(out)


def literal(text: str) -> str:
    """``text`` as a regular expression matching itself: each character but letters, digits and "_" escaped, which
    both dialects read as that character."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "\\" + c if c.isascii() else c for c in text)


def pattern(model: str) -> str | None:
    """The regular expression of a model glob, or None for a plain name, compared for equality (so is a pattern saved
    past Budget.clean that does not translate: the gate and the ledger then read it alike)."""
    if not is_glob(model):
        return None
    try:
        return glob_regex(model)
    except BadGlob:
        return None


def model_matcher(model: str) -> re.Pattern[str] | None:
    """The compiled pattern of a glob, or None for a plain name."""
    regex = pattern(model)
    return re.compile(regex) if regex is not None else None


def ledger_q(*, project_id: int | None, model: str, tag: str, end_user: str, model_field: str = "public_model",
             rollup: bool = False) -> Q:
    """The filter selecting the ledger rows (or, ``rollup``, the rollup rows) a budget's narrower scopes cover."""
    q = Q()
    if project_id is not None:
        q &= Q(project_id=project_id)
    if model:
        regex = pattern(model)
        q &= Q(**{model_field: model}) if regex is None else Q(**{f"{model_field}__regex": regex})
    if not rollup:
        if tag:
            # SQLite's LIKE ignores case; the regular expression keeps the match as exact as the gate's.
            q &= Q(tags__contains=needle(tag), tags__regex=literal(needle(tag)))
        if end_user:
            q &= Q(end_user=end_user)
    return q
