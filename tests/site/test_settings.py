from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from gateway_site.settings import (
    BASE_DIR,
    database_from_url,
    env_bool,
    env_int,
    env_proxy_ssl_header,
    env_secret,
    redis_url,
)


def test_env_bool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAG", "Yes")
    assert env_bool("FLAG", False) is True
    monkeypatch.setenv("FLAG", "off")
    assert env_bool("FLAG", True) is False
    monkeypatch.delenv("FLAG")
    assert env_bool("FLAG", True) is True
    monkeypatch.setenv("FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="FLAG"):
        env_bool("FLAG", False)


def test_env_int(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNT", "12")
    assert env_int("COUNT", 1) == 12
    monkeypatch.setenv("COUNT", "twelve")
    with pytest.raises(ImproperlyConfigured, match="COUNT must be a whole number"):
        env_int("COUNT", 1)
    monkeypatch.setenv("COUNT", "-1")
    with pytest.raises(ImproperlyConfigured, match="COUNT must be at least 0"):
        env_int("COUNT", 1)


def test_env_secret_reads_value_or_file_and_needs_one_outside_debug(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SOME_SECRET", raising=False)
    monkeypatch.delenv("SOME_SECRET_FILE", raising=False)
    with pytest.raises(ImproperlyConfigured, match="SOME_SECRET"):
        env_secret("SOME_SECRET", dev_default="dev")
    assert env_secret("SOME_SECRET", dev_default="dev", debug=True) == "dev"
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    monkeypatch.setenv("SOME_SECRET_FILE", str(secret_file))
    assert env_secret("SOME_SECRET") == "from-a-file"
    monkeypatch.setenv("SOME_SECRET", "also-set")
    with pytest.raises(ImproperlyConfigured, match="either SOME_SECRET or SOME_SECRET_FILE"):
        env_secret("SOME_SECRET")
    monkeypatch.delenv("SOME_SECRET")
    monkeypatch.setenv("SOME_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="SOME_SECRET_FILE"):
        env_secret("SOME_SECRET")


def test_database_url_postgres_uses_the_pool() -> None:
    db = database_from_url("postgres://tg:p%40ss@db.internal:6432/tollgate?sslmode=require", pool_min=2, pool_max=8)
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == ("tollgate", "tg", "p@ss", "db.internal", "6432")
    assert db["CONN_MAX_AGE"] == 0
    assert db["OPTIONS"]["pool"]["max_size"] == 8 and db["OPTIONS"]["sslmode"] == "require"


def test_database_url_sqlite_and_bad_urls() -> None:
    db = database_from_url("sqlite:////tmp/x.sqlite3", pool_min=1, pool_max=1)
    assert db["NAME"] == "/tmp/x.sqlite3" and db["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL must start with"):
        database_from_url("mysql://root@localhost/db", pool_min=1, pool_max=1)
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL must name a database"):
        database_from_url("postgres://localhost", pool_min=1, pool_max=1)


def test_the_proxy_ssl_header_is_a_header_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROXY_HEADER", raising=False)
    assert env_proxy_ssl_header("PROXY_HEADER") is None
    monkeypatch.setenv("PROXY_HEADER", "X-Forwarded-Proto")
    assert env_proxy_ssl_header("PROXY_HEADER") == ("HTTP_X_FORWARDED_PROTO", "https")
    for bad in ("HTTP_X_FORWARDED_PROTO=https", "X Forwarded", "Ünicode"):
        monkeypatch.setenv("PROXY_HEADER", bad)
        with pytest.raises(ImproperlyConfigured, match="PROXY_HEADER must be a header name"):
            env_proxy_ssl_header("PROXY_HEADER")


def test_redis_url_must_be_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_REDIS", "http://localhost:6379")
    with pytest.raises(ImproperlyConfigured, match="SOME_REDIS"):
        redis_url("SOME_REDIS")


def start_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Load the real settings in a fresh interpreter, as a server process would."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TOLLGATE_", "DATABASE_URL", "REDIS_URL"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "gateway_site.settings", "TOLLGATE_DATA_DIR": "/tmp/tollgate-settings-test"})
    clean.update(env)
    code = "import django; django.setup(); print('ok')"
    return subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=clean, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "env, variable",
    [
        ({}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "s"}, "TOLLGATE_KEY_PEPPER"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_KEY_CACHE_SECONDS": "soon"}, "TOLLGATE_KEY_CACHE_SECONDS"),
        ({"DJANGO_DEBUG": "perhaps"}, "DJANGO_DEBUG"),
        ({"DJANGO_DEBUG": "1", "DATABASE_URL": "oracle://x/y"}, "DATABASE_URL"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_LOG_LEVEL": "LOUD"}, "TOLLGATE_LOG_LEVEL"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_LEDGER_RETENTION_DAYS": "30"}, "TOLLGATE_LEDGER_RETENTION_DAYS"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_UNPRICED": "maybe"}, "TOLLGATE_UNPRICED"),
        ({"DJANGO_DEBUG": "1", "DJANGO_SECURE_HSTS_SECONDS": "a year"}, "DJANGO_SECURE_HSTS_SECONDS"),
        ({"DJANGO_DEBUG": "1", "DJANGO_SECURE_SSL_REDIRECT": "always"}, "DJANGO_SECURE_SSL_REDIRECT"),
        ({"DJANGO_DEBUG": "1", "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https"}, "DJANGO_SECURE_PROXY_SSL_HEADER"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_WEBHOOK_ALLOW_PRIVATE": "sometimes"}, "TOLLGATE_WEBHOOK_ALLOW_PRIVATE"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_QUEUE_HIGH": "celery"}, "TOLLGATE_QUEUE_HIGH"),  # beat's housekeeping queue
        ({"DJANGO_DEBUG": "1", "TOLLGATE_QUEUE_LOW": "default"}, "TOLLGATE_QUEUE_HIGH, _DEFAULT and _LOW"),  # twice
        ({"DJANGO_DEBUG": "1", "TOLLGATE_QUEUE_LOW": "bulk,slow"}, "TOLLGATE_QUEUE_LOW"),  # breaks --queues a,b,c
        ({"DJANGO_DEBUG": "1", "TOLLGATE_QUEUE_DEFAULT": "normal jobs"}, "TOLLGATE_QUEUE_DEFAULT"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_BATCH_CONCURRENCY": "high=many"}, "TOLLGATE_BATCH_CONCURRENCY"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_BATCH_CONCURRENCY": "high=0"}, "TOLLGATE_BATCH_CONCURRENCY"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_BATCH_CONCURRENCY": "64"}, "TOLLGATE_BATCH_CONCURRENCY"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_BATCH_RATES": "default=-5"}, "TOLLGATE_BATCH_RATES"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_BATCH_RATES": "=600"}, "TOLLGATE_BATCH_RATES"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_BATCH_RATE_SHARE": "101"}, "TOLLGATE_BATCH_RATE_SHARE"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_BATCH_LEASE_SECONDS": "1"}, "TOLLGATE_BATCH_LEASE_SECONDS"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_FILES_STORAGE_OPTIONS": "{bucket_name: 'x'}"}, "TOLLGATE_FILES_STORAGE_OPTIONS"),
        ({"DJANGO_DEBUG": "1", "TOLLGATE_FILES_STORAGE_OPTIONS": '["tollgate-files"]'}, "TOLLGATE_FILES_STORAGE_OPTIONS"),
    ],
)
def test_bad_configuration_stops_startup_naming_the_variable(env: dict[str, str], variable: str) -> None:
    result = start_with(env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and variable in result.stderr


def test_debug_alone_starts_with_development_defaults() -> None:
    result = start_with({"DJANGO_DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_every_middleware_of_the_pages_stack_is_async_capable() -> None:
    # One sync-only middleware makes Django run every async view (the playground's stream) through a thread.
    from django.conf import settings
    from django.utils.module_loading import import_string

    sync_only = [path for path in settings.MIDDLEWARE if not getattr(import_string(path), "async_capable", False)]
    assert sync_only == []


def database_settings(env: dict[str, str]) -> str:
    """The default database's settings as the real settings build them in a fresh interpreter."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TOLLGATE_", "DATABASE_URL", "REDIS_URL"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "gateway_site.settings", "TOLLGATE_DATA_DIR": "/tmp/tollgate-settings-test",
                  "DJANGO_DEBUG": "1", **env})
    code = "from django.conf import settings; print(settings.DATABASES['default'].get('DISABLE_SERVER_SIDE_CURSORS'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=clean, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_server_side_cursors_can_be_turned_off_for_pgbouncer_in_transaction_mode() -> None:
    # A server-side cursor outlives its transaction; through PgBouncer in transaction mode the next fetch may reach
    # another server connection. Django's switch for it is DISABLE_SERVER_SIDE_CURSORS (README, "Running a fleet").
    url = "postgres://tollgate@pgbouncer:6432/tollgate"
    assert database_settings({"DATABASE_URL": url}) == "False"
    assert database_settings({"DATABASE_URL": url, "TOLLGATE_DB_SERVER_SIDE_CURSORS": "off"}) == "True"


def batch_settings(env: dict[str, str]) -> dict[str, object]:
    """The queues, batch numbers and files storage as the real settings build them in a fresh interpreter."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TOLLGATE_", "DATABASE_URL", "REDIS_URL"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "gateway_site.settings", "TOLLGATE_DATA_DIR": "/tmp/tollgate-settings-test",
                  "DJANGO_DEBUG": "1", **env})
    code = ("import json; from django.conf import settings as s; print(json.dumps({'queues': s.TOLLGATE_QUEUES, "
            "'concurrency': s.TOLLGATE_BATCH_CONCURRENCY, 'rates': s.TOLLGATE_BATCH_RATES, "
            "'share': s.TOLLGATE_BATCH_RATE_SHARE, 'files': s.STORAGES['tollgate_files']}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=clean, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_batch_queues_and_their_numbers_default_by_tier() -> None:
    parsed = batch_settings({})
    assert parsed["queues"] == {"high": "high", "default": "default", "low": "low"}
    assert parsed["concurrency"] == {"high": 64, "default": 32, "low": 8}
    assert parsed["rates"] == {} and parsed["share"] == 50  # no per-queue rate unless set
    assert parsed["files"] == {"BACKEND": "django.core.files.storage.FileSystemStorage",
                               "OPTIONS": {"location": "/tmp/tollgate-settings-test/files"}}


def test_batch_numbers_are_named_by_tier_or_by_queue_name() -> None:
    parsed = batch_settings({"TOLLGATE_QUEUE_HIGH": "urgent", "TOLLGATE_QUEUE_LOW": "bulk",
                             # a tier (high), the renamed low tier's queue (bulk), a route's own queue (gpu-a)
                             "TOLLGATE_BATCH_CONCURRENCY": "high=10, bulk=3,gpu-a=2",
                             "TOLLGATE_BATCH_RATES": "default=600,urgent=1200", "TOLLGATE_BATCH_RATE_SHARE": "25"})
    assert parsed["queues"] == {"high": "urgent", "default": "default", "low": "bulk"}
    assert parsed["concurrency"] == {"urgent": 10, "default": 32, "bulk": 3, "gpu-a": 2}  # the rest keep the defaults
    assert parsed["rates"] == {"default": 600, "urgent": 1200}
    assert parsed["share"] == 25


def test_files_storage_options_are_a_json_object_passed_to_the_backend() -> None:
    options = {"bucket_name": "tollgate-files", "region_name": "eu-central-1", "default_acl": None}
    parsed = batch_settings({"TOLLGATE_FILES_STORAGE": "storages.backends.s3.S3Storage",
                             "TOLLGATE_FILES_STORAGE_OPTIONS": json.dumps(options)})
    assert parsed["files"] == {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}  # no location added
    # The filesystem's location may be set too; then it is kept.
    parsed = batch_settings({"TOLLGATE_FILES_STORAGE_OPTIONS": '{"location": "/srv/tollgate-files"}'})
    assert parsed["files"] == {"BACKEND": "django.core.files.storage.FileSystemStorage",
                               "OPTIONS": {"location": "/srv/tollgate-files"}}
