"""Test settings: the real settings plus fast hashing, eager Celery and captured email."""

from __future__ import annotations

import os
import tempfile

# Tests never depend on the developer's secrets; these exist only for the test run.
os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key")
os.environ.setdefault("TOLLGATE_KEY_PEPPER", "test-key-pepper")

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# In process, tasks run eagerly; a live worker started by a test (TOLLGATE_LIVE_TEST_DATABASE) uses the real broker.
CELERY_TASK_ALWAYS_EAGER = not os.environ.get("TOLLGATE_LIVE_TEST_DATABASE")
CELERY_TASK_EAGER_PROPAGATES = True
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
if os.environ.get("TOLLGATE_TEST_OUTBOX"):
    # A live server started by a test writes its emails there as files, for the test to read.
    EMAIL_BACKEND = "gateway_site.mail.OutboxBackend"
    EMAIL_FILE_PATH = Path(os.environ["TOLLGATE_TEST_OUTBOX"])  # noqa: F405
TOLLGATE_DEMO_TOKEN_DELAY_MS = 0
# In process, nothing runs in the background and each test run journals into a directory of its own; live
# servers started by a test get TOLLGATE_UPKEEP=on and the directory the test chooses.
TOLLGATE_UPKEEP = env_bool("TOLLGATE_UPKEEP", False)  # noqa: F405
# Importing gateway_site.asgi in process must not query the database; tests that start a server turn it on.
TOLLGATE_PEPPER_CHECK = env_bool("TOLLGATE_PEPPER_CHECK", False)  # noqa: F405
if not os.environ.get("TOLLGATE_JOURNAL_DIR"):
    TOLLGATE_JOURNAL_DIR = Path(tempfile.mkdtemp(prefix="tollgate-journal-"))  # noqa: F405

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file rather than memory, so the live server process of the SDK tests can open the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-db.sqlite3")}
if os.environ.get("TOLLGATE_LIVE_TEST_DATABASE"):
    # Set by the live-server fixture: serve the test run's database, which pytest-django already created.
    DATABASES["default"]["NAME"] = os.environ["TOLLGATE_LIVE_TEST_DATABASE"]
