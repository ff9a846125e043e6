"""Prices imported in bulk (loadprices) are audited like prices saved one by one."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from auditlog.models import LogEntry
from django.core.management import call_command

from billing.models import Price

from .helpers import entries_for, source

pytestmark = pytest.mark.django_db


def load(tmp_path: Path, rows: list[dict[str, str]], *args: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(rows))
    call_command("loadprices", str(path), *args, stdout=StringIO())


def test_created_and_updated_prices_have_entries(tmp_path: Path) -> None:
    row = {"model": "gpt-4o", "input_per_million": "2.50", "output_per_million": "10.00", "effective_from": "2025-01-01"}
    load(tmp_path, [row])
    price = Price.objects.get(model="gpt-4o")
    [created] = entries_for(price)
    assert created.action == LogEntry.Action.CREATE and source(created) == "command"
    assert created.changes["input_per_million"][0] == "None" and created.changes["model"] == ["None", "gpt-4o"]
    assert Decimal(created.changes["input_per_million"][1]) == Decimal("2.5")
    load(tmp_path, [row])  # unchanged: nothing written, nothing recorded
    assert len(entries_for(price)) == 1
    load(tmp_path, [{**row, "input_per_million": "2.00"}], "--update")
    updated = entries_for(price)[-1]
    assert updated.action == LogEntry.Action.UPDATE
    assert [Decimal(v) for v in updated.changes["input_per_million"]] == [Decimal("2.5"), Decimal("2")]
    assert set(updated.changes) <= {"input_per_million", "note"}, updated.changes
    assert Price.objects.get(pk=price.pk).effective_from == date(2025, 1, 1)
