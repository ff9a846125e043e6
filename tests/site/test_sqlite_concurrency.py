from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import OperationalError, connections, transaction

from gateway_site.settings import sqlite_database

WRITERS = 100
WRITES_EACH = 4


@pytest.fixture
def stress_alias(tmp_path: Path, django_db_blocker):
    """A file-backed SQLite database with the settings' options, separate from the test database."""
    config = connections.configure_settings({"default": sqlite_database(tmp_path / "stress.sqlite3")})["default"]
    connections.settings["stress"] = config
    with django_db_blocker.unblock():
        with connections["stress"].cursor() as cursor:
            cursor.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, writer INTEGER, n INTEGER)")
        connections["stress"].close()
        yield "stress"
    del connections.settings["stress"]


def test_tuned_sqlite_takes_concurrent_writes_without_lock_errors(stress_alias: str) -> None:
    def write(writer: int) -> str | None:
        try:
            # Like a request: read, then write several rows in one transaction.
            with transaction.atomic(using=stress_alias), connections[stress_alias].cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM ledger WHERE writer = %s", [writer])
                for n in range(WRITES_EACH):
                    cursor.execute("INSERT INTO ledger (writer, n) VALUES (%s, %s)", [writer, n])
            return None
        except OperationalError as e:
            return str(e)
        finally:
            connections[stress_alias].close()

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        errors = [e for e in pool.map(write, range(WRITERS)) if e]
    assert errors == []
    with connections[stress_alias].cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM ledger")
        assert cursor.fetchone()[0] == WRITERS * WRITES_EACH
    connections[stress_alias].close()
