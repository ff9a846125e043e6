"""Applying a configuration document: plan it, show the plan, and carry it out in one transaction."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import ProtectedError, RestrictedError

from audit.context import verb

from . import ConfigError
from .plan import Plan, Planner
from .tenants import plan_tenants


class _DryRun(Exception):
    """Raised at the end of a dry run to roll its writes back."""


def plan(document: dict[str, Any], *, prune: bool = False, environ: Mapping[str, str] | None = None) -> Plan:
    """Return what applying the (validated) document would change. Raises ConfigError on a bad reference."""
    planner = Planner(document, prune=prune, environ=os.environ if environ is None else environ)
    planner.providers()
    planner.routes()
    planner.prices()
    plan_tenants(planner)
    return planner.result()


def execute(planned: Plan, *, commit: bool) -> None:
    """Make every change in one transaction; without commit, roll them back (a dry run that validates each row).
    Raises ConfigError when a row is invalid or the database refuses; then nothing is applied."""
    try:
        with verb("config apply"), transaction.atomic():  # the audit log names where these changes came from
            for change in planned.changes:
                change.run()
            if not commit:
                raise _DryRun
    except _DryRun:
        pass
    except (ProtectedError, RestrictedError) as e:
        raise ConfigError(f"the database refused a deletion: {e.args[0]}") from None
    except DatabaseError as e:
        raise ConfigError(f"the database refused the change ({type(e).__name__}: {e}); nothing was applied") from None


def render(planned: Plan, *, applied: bool) -> str:
    """The plan as a readable diff: + create, ~ field: old → new, - delete; or "no changes"."""
    lines: list[str] = []
    for change in planned.changes:
        lines.append(f"{change.action} {change.label}")
        lines += [f"    {line}" for line in change.lines]
    counts = Counter(change.action for change in planned.changes)
    kept = (f"; {planned.kept} object(s) in the database but not in the file kept (--prune deletes them)"
            if planned.kept else "")
    if not planned.changes:
        lines.append(f"no changes{kept}")
    else:
        verb = "applied" if applied else "would apply (dry run; --yes applies)"
        lines.append(f"{verb}: {counts['+']} to create, {counts['~']} to update, {counts['-']} to delete{kept}")
    lines += [f"note: {note}" for note in planned.notes]
    return "\n".join(lines) + "\n"
