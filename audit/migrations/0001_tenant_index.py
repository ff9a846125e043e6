"""The Activity page and the admin's tenant filter read one tenant's entries, newest first, by the tenant id kept in
additional_data: on PostgreSQL an expression index makes that an index range scan instead of a scan of the log."""

from __future__ import annotations

from typing import Any

from django.db import migrations

CREATE = ('CREATE INDEX IF NOT EXISTS audit_logentry_tenant_time ON auditlog_logentry '
          '((additional_data -> \'tenant\'), "timestamp" DESC, id DESC)')
DROP = "DROP INDEX IF EXISTS audit_logentry_tenant_time"


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":  # jsonb; SQLite's embedded logs stay small
        schema_editor.execute(CREATE)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("auditlog", "0017_add_actor_email")]
    operations = [migrations.RunPython(create, drop)]
