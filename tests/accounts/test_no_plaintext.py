from __future__ import annotations

import logging
import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts import services

from ..conftest import Party


def database_text() -> str:
    """Every value of every table, as text."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


def test_no_plaintext_key_in_database_queries_or_logs(
    admin_client: Client, client: Client, alice: Party, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with CaptureQueriesContext(connection) as queries:
        secrets = [alice.secret]
        out = StringIO()
        call_command("issuekey", "alice", stdout=out, stderr=StringIO())
        secrets.append(out.getvalue().strip())
        response = admin_client.post(
            "/admin/accounts/apikey/add/",
            {"tenant": alice.tenant.pk, "name": "admin-made", "allowed_models": "[]", "expires_at_0": "", "expires_at_1": ""},
            follow=True,
        )
        secrets.extend(re.findall(r"tg-[0-9a-f]{12}-[A-Za-z0-9]{40}", response.content.decode()))
        _, rotated = services.rotate_key(key=alice.key)
        secrets.append(rotated)
        for secret in secrets:
            client.get("/v1/anything", headers={"Authorization": f"Bearer {secret}"})
            client.get("/v1/anything", headers={"Authorization": f"Bearer {secret[:-2]}xx"})
    assert len(set(secrets)) == 4
    stored = database_text()
    sql = "\n".join(q["sql"] for q in queries.captured_queries)
    for secret in secrets:
        hidden = secret.rsplit("-", 1)[1]  # the secret part; the prefix is public by design
        assert hidden not in stored
        assert hidden not in sql
        assert hidden not in caplog.text
