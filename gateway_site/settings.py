"""Tollgate settings: one file, driven by environment variables (read by the helpers in gateway_site/env.py).

Every variable is listed in the README's configuration table. A bad value stops the process at
startup with ImproperlyConfigured naming the variable, rather than failing on the first request.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from gateway_site.env import (  # noqa: F401 (the helpers stay importable from here)
    database_from_url,
    env_bool,
    env_int,
    env_json_object,
    env_list,
    env_micros,
    env_proxy_ssl_header,
    env_queue_numbers,
    env_secret,
    redis_url,
    sqlite_database,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", False)
DATA_DIR = Path(os.environ.get("TOLLGATE_DATA_DIR") or BASE_DIR / "var")
# The embedded default (no DATABASE_URL: SQLite in DATA_DIR) also reads the secrets `./tollgate run` generated in
# DATA_DIR, so manage.py and celery work from a plain shell. A deployment that names its database names its secrets.
_embedded = not os.environ.get("DATABASE_URL", "").strip()
SECRET_KEY = env_secret("DJANGO_SECRET_KEY", dev_default="dev-only-secret-key-not-for-production", debug=DEBUG,
                        generated=DATA_DIR / "secret_key" if _embedded else None)
# The pepper for API key digests. Changing it invalidates every issued key (see accounts/pepper.py).
TOLLGATE_KEY_PEPPER = env_secret("TOLLGATE_KEY_PEPPER", dev_default="dev-only-key-pepper", debug=DEBUG,
                                 generated=DATA_DIR / "key_pepper" if _embedded else None)
# Serving processes refuse to start under a pepper other than the recorded one. Only tests turn the check off.
TOLLGATE_PEPPER_CHECK = env_bool("TOLLGATE_PEPPER_CHECK", True)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")


INSTALLED_APPS = [
    "daphne",  # first, so `runserver` serves ASGI: /v1 streaming breaks under WSGI
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from our static files: the docs page works offline
    "django_celery_beat",
    "gateway_site",  # system checks; `migrate` moves money keys of earlier versions (gateway_site/apps.py)
    "accounts",
    "proxy",
    "billing",
    "batches",  # the Files and Batches API; its lines run on Celery workers
    "auditlog",
    "audit",  # who changed what: every change to tenants, keys, budgets, prices, routes... with actor and source
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "gateway_site.security.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "audit.middleware.AuditMiddleware",  # source and client address of audit entries; /v1 passes straight through
]

ROOT_URLCONF = "gateway_site.urls"
ASGI_APPLICATION = "gateway_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database_url = os.environ.get("DATABASE_URL", "").strip()
if _database_url:
    _default_db = database_from_url(
        _database_url,
        pool_min=env_int("TOLLGATE_DB_POOL_MIN", 2),
        pool_max=env_int("TOLLGATE_DB_POOL_MAX", 10, minimum=1),
    )
    # Off behind PgBouncer in transaction mode: a server-side cursor (QuerySet.iterator()) outlives its transaction,
    # and the next fetch may reach another server connection (README, "Running a fleet").
    _default_db["DISABLE_SERVER_SIDE_CURSORS"] = not env_bool("TOLLGATE_DB_SERVER_SIDE_CURSORS", True)
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    _default_db = sqlite_database(DATA_DIR / "tollgate.sqlite3")
DATABASES = {"default": _default_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = redis_url("REDIS_URL")
# Each kind of shared state may live on its own Redis; each defaults to REDIS_URL. The money state (budget
# counters, holds, rate limit windows and slots) must never be evicted: give it a Redis with maxmemory-policy
# noeviction. The response cache may be evicted freely. The broker and the channel layer carry messages only.
TOLLGATE_MONEY_REDIS_URL = redis_url("TOLLGATE_MONEY_REDIS_URL") or REDIS_URL
TOLLGATE_CACHE_REDIS_URL = redis_url("TOLLGATE_CACHE_REDIS_URL") or REDIS_URL
TOLLGATE_BROKER_URL = os.environ.get("TOLLGATE_BROKER_URL", "").strip() or REDIS_URL
TOLLGATE_CHANNELS_REDIS_URL = redis_url("TOLLGATE_CHANNELS_REDIS_URL") or REDIS_URL
# The money Redis is a Redis Cluster (its URL names any one node): the money state's scripts and the "limits" cache
# then use redis-py's cluster client. Every script's keys share one hash slot (billing/keyspace.py).
TOLLGATE_MONEY_REDIS_CLUSTER = env_bool("TOLLGATE_MONEY_REDIS_CLUSTER", False)
# How many serving processes the whole deployment runs, across hosts (uvicorn's WEB_CONCURRENCY counts one host's):
# with more than one, system checks warn about state that would stay inside each process (gateway_site/checks.py).
TOLLGATE_PROCESSES = env_int("TOLLGATE_PROCESSES", 1, minimum=1)
# Django's default cache (key lookups, pages) is disposable and lives on REDIS_URL; the "limits" cache holds rate
# counters (the management API, the login throttle) and lives with the money state.
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "tollgate",
        "OPTIONS": {"IGNORE_EXCEPTIONS": True},
    } if REDIS_URL else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tollgate-default"},
    # Rate and spend counters. Never IGNORE_EXCEPTIONS here: proxy/limits.py decides, in code,
    # what happens when Redis is down.
    "limits": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": TOLLGATE_MONEY_REDIS_URL,
        "KEY_PREFIX": "tollgate-limits",
        "OPTIONS": {"CONNECTION_FACTORY": "gateway_site.redis_cluster.ClusterConnectionFactory"}
        if TOLLGATE_MONEY_REDIS_CLUSTER else {},
    } if TOLLGATE_MONEY_REDIS_URL else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                        "LOCATION": "tollgate-limits"},
}
if TOLLGATE_BROKER_URL:
    CELERY_BROKER_URL = TOLLGATE_BROKER_URL  # redis:// or amqp://
else:
    # Celery's filesystem transport lets `worker -B` run beat jobs with no Redis or RabbitMQ.
    CELERY_BROKER_URL = "filesystem://"
    for folder in ("queue", "processed", "control"):
        (DATA_DIR / "celery" / folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(DATA_DIR / "celery" / "queue"),
        "data_folder_out": str(DATA_DIR / "celery" / "queue"),
        "processed_folder": str(DATA_DIR / "celery" / "processed"),
        "control_folder": str(DATA_DIR / "celery" / "control"),  # default: ./control in the working directory
        "store_processed": False,
    }
# Batches (README, "Batches and queues"). The three tiers' Celery queues; a tenant's tier picks one, and a route may
# name a queue of its own so a model's workers scale separately. Beat and housekeeping jobs stay on "celery".
TOLLGATE_QUEUES = {
    "high": os.environ.get("TOLLGATE_QUEUE_HIGH", "").strip() or "high",
    "default": os.environ.get("TOLLGATE_QUEUE_DEFAULT", "").strip() or "default",
    "low": os.environ.get("TOLLGATE_QUEUE_LOW", "").strip() or "low",
}
if len(set(TOLLGATE_QUEUES.values())) != 3 or "celery" in TOLLGATE_QUEUES.values():
    raise ImproperlyConfigured("TOLLGATE_QUEUE_HIGH, _DEFAULT and _LOW must be three different names, none of them 'celery'")
for _tier, _queue in TOLLGATE_QUEUES.items():
    # Names go into a worker's comma-separated --queues and into "queue=number" settings: plain words only.
    if not _queue.replace("-", "").replace("_", "").replace(".", "").isalnum() or not _queue.isascii():
        raise ImproperlyConfigured(f"TOLLGATE_QUEUE_{_tier.upper()} must be letters, digits, '-', '_' or '.', got {_queue!r}")
# Lines in flight at once per worker process, per queue ("queue=count,..."; the tiers' defaults below).
TOLLGATE_BATCH_CONCURRENCY = env_queue_numbers("TOLLGATE_BATCH_CONCURRENCY", "high=64,default=32,low=8",
                                               TOLLGATE_QUEUES, minimum=1)
# Lines started per minute per queue, across every worker ("queue=count,..."; a queue not named has no limit).
TOLLGATE_BATCH_RATES = env_queue_numbers("TOLLGATE_BATCH_RATES", "", TOLLGATE_QUEUES, minimum=1)
# The share (percent) of a key's and a tenant's rate limits that its batches may take: interactive /v1 keeps the rest.
TOLLGATE_BATCH_RATE_SHARE = env_int("TOLLGATE_BATCH_RATE_SHARE", 50, minimum=1)
if TOLLGATE_BATCH_RATE_SHARE > 100:
    raise ImproperlyConfigured("TOLLGATE_BATCH_RATE_SHARE is a percentage: 1 to 100")
# Lines per part: a part is what one worker runs at a time; several workers share a large batch by parts.
TOLLGATE_BATCH_PART_LINES = env_int("TOLLGATE_BATCH_PART_LINES", 1000, minimum=1)
# A worker renews the lease of the part it runs; a part whose lease ran out this long ago goes to another worker.
TOLLGATE_BATCH_LEASE_SECONDS = env_int("TOLLGATE_BATCH_LEASE_SECONDS", 30, minimum=5)
# A batch still validating this long after its validation was sent has its validation sent again (the message or
# the task may have been lost); a validation raced by its copy still splits the batch once.
TOLLGATE_BATCH_VALIDATION_RESEND_SECONDS = env_int("TOLLGATE_BATCH_VALIDATION_RESEND_SECONDS", 300, minimum=10)
TOLLGATE_BATCH_MAX_LINES = env_int("TOLLGATE_BATCH_MAX_LINES", 50_000, minimum=1)
# A worker consuming a batch queue runs at this CPU niceness (0-19; 0 turns it off), below the web processes on the
# same host: interactive /v1 keeps priority, and a batch takes the cores the web processes leave (batches/priority.py).
TOLLGATE_BATCH_NICE = env_int("TOLLGATE_BATCH_NICE", 10)
if TOLLGATE_BATCH_NICE > 19:
    raise ImproperlyConfigured("TOLLGATE_BATCH_NICE is a niceness: 0 (off) to 19")
# Uploads to /v1/files: the largest accepted file, streamed to storage (never held in memory).
TOLLGATE_FILE_MAX_BYTES = env_int("TOLLGATE_FILE_MAX_BYTES", 200 * 1024 * 1024, minimum=1024)
# Days a batch's output and error files are kept after it ends (0: until their tenant deletes them). Expired files,
# these and uploads with expires_after, are deleted by the hourly "Delete expired files" job.
TOLLGATE_BATCH_OUTPUT_EXPIRY_DAYS = env_int("TOLLGATE_BATCH_OUTPUT_EXPIRY_DAYS", 0, minimum=0)
# Stored Responses API answers (store: true, the default) are kept this many days, then deleted by the "Tend stored
# responses" job. A conversation continued with previous_response_id may be at most this many turns long (400 past it).
TOLLGATE_RESPONSES_RETENTION_DAYS = env_int("TOLLGATE_RESPONSES_RETENTION_DAYS", 30, minimum=1)
TOLLGATE_RESPONSES_MAX_TURNS = env_int("TOLLGATE_RESPONSES_MAX_TURNS", 100, minimum=1)
# A background response still in progress this long after it started is marked failed (its worker was lost); one
# still queued this long has its run sent again (its message may have been lost).
TOLLGATE_RESPONSES_LOST_SECONDS = env_int("TOLLGATE_RESPONSES_LOST_SECONDS", 3600, minimum=60)
# Where file contents live: a Django storage class and its options as JSON (e.g. django-storages' S3 backend);
# the embedded default keeps them under the data folder.
TOLLGATE_FILES_STORAGE = os.environ.get("TOLLGATE_FILES_STORAGE", "").strip() or "django.core.files.storage.FileSystemStorage"
TOLLGATE_FILES_STORAGE_OPTIONS = env_json_object("TOLLGATE_FILES_STORAGE_OPTIONS")
if TOLLGATE_FILES_STORAGE == "django.core.files.storage.FileSystemStorage":
    TOLLGATE_FILES_STORAGE_OPTIONS.setdefault("location", str(DATA_DIR / "files"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "tollgate_files": {"BACKEND": TOLLGATE_FILES_STORAGE, "OPTIONS": TOLLGATE_FILES_STORAGE_OPTIONS},
}
# Uploads spill to a temporary file past this size, so a large file never sits in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
CELERY_TASK_CREATE_MISSING_QUEUES = True
if (TOLLGATE_BROKER_URL or "").startswith("redis"):
    # A worker consuming several queues takes from the first non-empty one in the order given (-Q high,default,low):
    # high before default before low, instead of Redis's default round robin.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"queue_order_strategy": "priority"}

if TOLLGATE_CHANNELS_REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                    "CONFIG": {"hosts": [TOLLGATE_CHANNELS_REDIS_URL]}},
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

RATELIMIT_USE_CACHE = "limits"
# The management API (/api/): session (with CSRF) or management token; django-ratelimit per user.
TOLLGATE_API_RATE = os.environ.get("TOLLGATE_API_RATE", "120/m").strip()
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api_auth.ManagementTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["gateway_site.api_limits.ApiRateLimit"],
    # JSON only: it is what the schema documents, and a form cannot express the list fields.
    "DEFAULT_PARSER_CLASSES": ["gateway_site.api_input.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "gateway_site.api_schema.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "gateway_site.api_input.Pagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "gateway_site.api_errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tollgate management API",
    "DESCRIPTION": "Tenants, API keys, budgets, prices, providers and routes. Operators (staff) manage everything; "
                   "tenant owners manage their own tenants' keys and budgets. The /v1 API is OpenAI's.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
# Publish each written ledger row to its tenant's live usage page (a channel layer message per batch).
TOLLGATE_LIVE_FEED = env_bool("TOLLGATE_LIVE_FEED", True)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# Single sign-on with OpenID Connect (README, "Single sign-on"): off while no issuer is set. The provider's endpoints
# come from its discovery document, fetched on first use (accounts/sso.py).
from accounts import sso_config as _sso  # noqa: E402 (reads the environment only)

TOLLGATE_OIDC_ISSUER = _sso.issuer("TOLLGATE_OIDC_ISSUER")
TOLLGATE_OIDC_CLIENT_ID = os.environ.get("TOLLGATE_OIDC_CLIENT_ID", "").strip()
TOLLGATE_OIDC_CLIENT_SECRET = env_secret("TOLLGATE_OIDC_CLIENT_SECRET", dev_default="", debug=True)
if TOLLGATE_OIDC_ISSUER and not (TOLLGATE_OIDC_CLIENT_ID and TOLLGATE_OIDC_CLIENT_SECRET):
    raise ImproperlyConfigured("TOLLGATE_OIDC_ISSUER needs TOLLGATE_OIDC_CLIENT_ID and TOLLGATE_OIDC_CLIENT_SECRET")
TOLLGATE_OIDC_SCOPES = _sso.scopes("TOLLGATE_OIDC_SCOPES", "openid email profile")
TOLLGATE_OIDC_SIGN_ALGO = _sso.sign_algorithm("TOLLGATE_OIDC_SIGN_ALGO", "RS256")
TOLLGATE_OIDC_PROVIDER_NAME = os.environ.get("TOLLGATE_OIDC_PROVIDER_NAME", "").strip() or "single sign-on"
TOLLGATE_OIDC_GROUPS_CLAIM = os.environ.get("TOLLGATE_OIDC_GROUPS_CLAIM", "").strip() or "groups"
TOLLGATE_OIDC_STAFF_GROUPS = env_list("TOLLGATE_OIDC_STAFF_GROUPS", "")
TOLLGATE_OIDC_SUPERUSER_GROUPS = env_list("TOLLGATE_OIDC_SUPERUSER_GROUPS", "")
TOLLGATE_OIDC_TENANT_GROUPS = _sso.tenant_grants("TOLLGATE_OIDC_TENANT_GROUPS")
TOLLGATE_PASSWORD_LOGIN = _sso.password_login("TOLLGATE_PASSWORD_LOGIN")
if not TOLLGATE_PASSWORD_LOGIN and not TOLLGATE_OIDC_ISSUER:
    raise ImproperlyConfigured("TOLLGATE_PASSWORD_LOGIN=off needs TOLLGATE_OIDC_ISSUER: nobody could sign in")
# With password sign-in off, no password authenticates anywhere (the admin, the pages, the API's session login).
AUTHENTICATION_BACKENDS = (["accounts.sso.Backend"] if TOLLGATE_OIDC_ISSUER else []) + (
    ["django.contrib.auth.backends.ModelBackend"] if TOLLGATE_PASSWORD_LOGIN else [])
OIDC_AUTHENTICATE_CLASS = "accounts.sso.Authenticate"
OIDC_CALLBACK_CLASS = "accounts.sso.Callback"
OIDC_TIMEOUT = 10
OIDC_USE_PKCE = True  # providers without PKCE ignore the challenge (RFC 7636)

CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Schedules live in the database, editable in the admin (Periodic tasks); billing's migrations create the
# defaults once, and an operator's changes are never overwritten.
# Two beats (two hosts) are safe: only the holder of a lock (Redis, else a PostgreSQL advisory lock, else a file in
# DATA_DIR) sends; a standby takes over within this many seconds (plus a quarter of it) of the holder dying.
CELERY_BEAT_SCHEDULER = "gateway_site.beat:SingletonScheduler"
TOLLGATE_BEAT_LOCK_SECONDS = env_int("TOLLGATE_BEAT_LOCK_SECONDS", 20, minimum=4)
CELERY_RESULT_EXPIRES = None  # no result backend, so no result cleanup job
CELERY_TASK_DEFAULT_RETRY_DELAY = 30
# Ledger rows older than this many days are deleted once the rollups hold them (0 keeps them forever).
TOLLGATE_LEDGER_RETENTION_DAYS = env_int("TOLLGATE_LEDGER_RETENTION_DAYS", 0, minimum=0)
if 0 < TOLLGATE_LEDGER_RETENTION_DAYS < 62:
    # Budget totals are rebuilt from the ledger for the current period (at most a month), so keep two.
    raise ImproperlyConfigured("TOLLGATE_LEDGER_RETENTION_DAYS must be 0 (keep forever) or at least 62")
# Audit log entries older than this many days are deleted nightly (0 keeps them forever).
TOLLGATE_AUDIT_RETENTION_DAYS = env_int("TOLLGATE_AUDIT_RETENTION_DAYS", 365, minimum=0)
# Merged into the database schedule (Periodic tasks in the admin) each time beat starts: its time is reset from
# here then, while disabling it in the admin sticks.
CELERY_BEAT_SCHEDULE = {
    "Prune the audit log past its retention": {
        "task": "audit.tasks.prune_entries",
        "schedule": crontab(minute="41", hour="3"),
    },
}

EMAIL_HOST = os.environ.get("EMAIL_HOST", "").strip()
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1)
    EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD", dev_default="", debug=True)
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", EMAIL_PORT == 587)
    EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", EMAIL_PORT == 465)
    EMAIL_TIMEOUT = 10
else:
    # No SMTP server: emails (alerts, password-reset links: secrets) go to files only this user can read, never the log.
    EMAIL_BACKEND = "gateway_site.mail.OutboxBackend"
EMAIL_FILE_PATH = DATA_DIR / "outbox"
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Tollgate <tollgate@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve collected static files from the app itself (admin CSS/JS). Turn off behind a web server
# that serves STATIC_ROOT.
TOLLGATE_SERVE_STATIC = env_bool("TOLLGATE_SERVE_STATIC", True)

# Plaintext API keys are shown once through a message; cookie storage keeps them out of the
# session table.
MESSAGE_STORAGE = "django.contrib.messages.storage.cookie.CookieStorage"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# HTTPS. Off unless set, since TLS is often terminated by a proxy in front, which may redirect and send HSTS itself.
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
# Set only behind a proxy that overwrites this header: without it the proxied requests all look like plain HTTP
# (the SSL redirect loops); with it and no such proxy, any client can claim HTTPS.
SECURE_PROXY_SSL_HEADER = env_proxy_ssl_header("DJANGO_SECURE_PROXY_SSL_HEADER")

# Validated key lookups are cached this long; revoke and rotate drop the entry at once.
TOLLGATE_KEY_CACHE_SECONDS = env_int("TOLLGATE_KEY_CACHE_SECONDS", 30)
# Each process also keeps its own copy this long, so a warm key costs no cache round trip. Revoke, rotate and
# every change of a key or tenant drop it at once in the process that made the change, and in every other process
# within a second when Redis is configured (gateway_site/changes.py); this time is then only a backstop.
TOLLGATE_KEY_LOCAL_CACHE_SECONDS = env_int("TOLLGATE_KEY_LOCAL_CACHE_SECONDS", 5)
# last_used_at is written at most this often per key.
TOLLGATE_KEY_TOUCH_SECONDS = env_int("TOLLGATE_KEY_TOUCH_SECONDS", 60, minimum=1)
# The /v1 path: largest accepted body, how long each process keeps its routing table, the demo's pacing.
TOLLGATE_MAX_BODY_BYTES = env_int("TOLLGATE_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = TOLLGATE_MAX_BODY_BYTES
TOLLGATE_ROUTES_CACHE_SECONDS = env_int("TOLLGATE_ROUTES_CACHE_SECONDS", 10)
# A slow first token is normal, so the read timeout is long; connecting to a dead upstream fails fast.
TOLLGATE_UPSTREAM_CONNECT_TIMEOUT = env_int("TOLLGATE_UPSTREAM_CONNECT_TIMEOUT", 5, minimum=1)
TOLLGATE_UPSTREAM_READ_TIMEOUT = env_int("TOLLGATE_UPSTREAM_READ_TIMEOUT", 120, minimum=1)
TOLLGATE_DEMO_TOKEN_DELAY_MS = env_int("TOLLGATE_DEMO_TOKEN_DELAY_MS", 30)
# Retries before the first byte (a route may set its own): attempts in all, the first included, and the time after
# which no new attempt starts. Backoff doubles from the base, with full jitter, up to the cap; a provider's
# Retry-After / retry-after-ms is honoured when it fits in what is left of the budget.
TOLLGATE_RETRY_ATTEMPTS = env_int("TOLLGATE_RETRY_ATTEMPTS", 3, minimum=1)
TOLLGATE_RETRY_BUDGET_SECONDS = env_int("TOLLGATE_RETRY_BUDGET_SECONDS", 30, minimum=1)
TOLLGATE_RETRY_BACKOFF_MS = env_int("TOLLGATE_RETRY_BACKOFF_MS", 250, minimum=1)
TOLLGATE_RETRY_BACKOFF_MAX_MS = env_int("TOLLGATE_RETRY_BACKOFF_MAX_MS", 8000, minimum=1)
# The circuit breaker, shared by every process through Redis: a deployment with this many failures within the
# window is benched (open) for the cool-down, then one probe request decides (half-open -> closed or open).
TOLLGATE_BREAKER_FAILURES = env_int("TOLLGATE_BREAKER_FAILURES", 5, minimum=1)
TOLLGATE_BREAKER_WINDOW_SECONDS = env_int("TOLLGATE_BREAKER_WINDOW_SECONDS", 60, minimum=1)
TOLLGATE_BREAKER_COOLDOWN_SECONDS = env_int("TOLLGATE_BREAKER_COOLDOWN_SECONDS", 30, minimum=1)
# Budgets: before forwarding, the whole request's worst case is held (every input part, plus max_tokens, or
# this many completion tokens when the request sets none, times n, at the model's prices); a hard budget admits
# a request while spent + held + this request <= amount + overdraft.
TOLLGATE_DEFAULT_COMPLETION_TOKENS = env_int("TOLLGATE_DEFAULT_COMPLETION_TOKENS", 4096, minimum=1)
TOLLGATE_BUDGET_OVERDRAFT_MICROS = env_micros("TOLLGATE_BUDGET_OVERDRAFT_USD", "0")
# Holds and in-flight slots are leased: the serving process renews the lease of every request it still runs
# (every quarter of it), so a process that dies lets go of its holds and slots at most this long after.
TOLLGATE_RESERVATION_LEASE_SECONDS = env_int("TOLLGATE_RESERVATION_LEASE_SECONDS", 20, minimum=8)
# The write-ahead journal: each serving process appends what it admits and how it ended to its own file here
# before the provider is called, so a killed process or a database outage loses no ledger row (billing/journal.py).
TOLLGATE_JOURNAL_DIR = Path(os.environ.get("TOLLGATE_JOURNAL_DIR") or DATA_DIR / "journal")
# The per-process upkeep task (leases, journal recovery, spooled rows). Only tests turn it off.
TOLLGATE_UPKEEP = env_bool("TOLLGATE_UPKEEP", True)
# A client that declares a body and stops sending it is answered 408 after this many seconds.
TOLLGATE_BODY_TIMEOUT_SECONDS = env_int("TOLLGATE_BODY_TIMEOUT_SECONDS", 30, minimum=1)
# Prompts longer than this many bytes are not tokenized for the gate: their UTF-8 length bounds their tokens.
TOLLGATE_TOKENIZE_MAX_BYTES = env_int("TOLLGATE_TOKENIZE_MAX_BYTES", 1024 * 1024, minimum=1024)
# No model takes more completion tokens than this; a larger max_tokens (or n x max_tokens) is a 400.
TOLLGATE_MAX_COMPLETION_TOKENS = env_int("TOLLGATE_MAX_COMPLETION_TOKENS", 1_000_000, minimum=1024)
# A model with no price: "allow" admits it at zero cost and flags its rows; "deny" refuses it when budgets apply.
TOLLGATE_UNPRICED = os.environ.get("TOLLGATE_UNPRICED", "allow").strip().lower()
if TOLLGATE_UNPRICED not in ("allow", "deny"):
    raise ImproperlyConfigured(f"TOLLGATE_UNPRICED must be allow or deny, got {TOLLGATE_UNPRICED!r}")
# Provider API keys are encrypted at rest with this secret (SECRET_KEY when unset).
TOLLGATE_CREDENTIALS_KEY = env_secret("TOLLGATE_CREDENTIALS_KEY", dev_default=SECRET_KEY, debug=True)
TOLLGATE_PUBLIC_URL = os.environ.get("TOLLGATE_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
# An invitation to join a tenant (Members page) can be accepted for this many days after it was sent.
TOLLGATE_INVITATION_DAYS = env_int("TOLLGATE_INVITATION_DAYS", 7, minimum=1)
# Alert webhooks go only to public addresses; on, also to private, loopback and link-local ones (accounts/webhooks.py).
TOLLGATE_WEBHOOK_ALLOW_PRIVATE = env_bool("TOLLGATE_WEBHOOK_ALLOW_PRIVATE", False)

# Operations: health probes, metrics, tracing, usage export (README "Operating Tollgate").
# A bearer token for the operators' endpoints (/metrics, /health/detailed) besides a staff session; it is
# compared in constant time and never logged. Empty: those endpoints need a staff session.
TOLLGATE_OPS_TOKEN = os.environ.get("TOLLGATE_OPS_TOKEN", "").strip()
# Health probes (gateway_site/health.py).
# /health/ready answers 503 when this process holds more ledger rows than this for the database (its spool) ...
TOLLGATE_READY_SPOOL_MAX_ROWS = env_int("TOLLGATE_READY_SPOOL_MAX_ROWS", 1000)
# ... or the journal directory holds more than this many MB of journal files (0: not checked).
TOLLGATE_READY_JOURNAL_MAX_MB = env_int("TOLLGATE_READY_JOURNAL_MAX_MB", 1024)
# ... or (when not 0) beat has sent no scheduled task for this many seconds. Beat saves each send at once, so allow
# the shortest schedule's interval and some slack (600 suits the default schedules).
TOLLGATE_READY_BEAT_MAX_AGE_SECONDS = env_int("TOLLGATE_READY_BEAT_MAX_AGE_SECONDS", 0)
# On SIGTERM /health/ready turns 503 and new requests get 503 at once; requests in flight get this many seconds to
# finish, then streams end with an error event and the process exits about 5 s later (gateway_site/drain.py). 25
# fits Kubernetes' default 30 s kill timeout; Docker's is 10 s unless stop_grace_period says more.
TOLLGATE_DRAIN_SECONDS = env_int("TOLLGATE_DRAIN_SECONDS", 25, minimum=0)
# Shown by /health/detailed (an image tag or a commit); when unset, the checkout's commit if there is one.
TOLLGATE_VERSION = os.environ.get("TOLLGATE_VERSION", "").strip()
# Metrics (gateway_site/metrics.py).
# Prometheus metrics at /metrics (with TOLLGATE_OPS_TOKEN) and on TOLLGATE_METRICS_BIND (no token) when set.
TOLLGATE_METRICS = env_bool("TOLLGATE_METRICS", True)
# Every process of one host (web workers, Celery workers) writes its values here; a scrape sums them.
TOLLGATE_METRICS_DIR = Path(os.environ.get("TOLLGATE_METRICS_DIR") or DATA_DIR / "metrics")
# host:port of a listener that serves only /metrics, without a token (bind it to a private address).
TOLLGATE_METRICS_BIND = os.environ.get("TOLLGATE_METRICS_BIND", "").strip()
if TOLLGATE_METRICS_BIND and not TOLLGATE_METRICS_BIND.rpartition(":")[2].isdigit():
    raise ImproperlyConfigured(f"TOLLGATE_METRICS_BIND must be host:port, got {TOLLGATE_METRICS_BIND!r}")
# A tenant label on tollgate_requests_total: one series per tenant and model, so off unless tenants are few.
TOLLGATE_METRICS_TENANT_LABEL = env_bool("TOLLGATE_METRICS_TENANT_LABEL", False)
# Tracing and logs.
# An OTLP/HTTP traces URL (e.g. http://otel-collector:4318/v1/traces): a span per /v1 request, exported in batches
# from a background thread (proxy/tracing.py). Empty: tracing is off and OpenTelemetry is never imported.
TOLLGATE_OTLP_ENDPOINT = os.environ.get("TOLLGATE_OTLP_ENDPOINT", "").strip()
if TOLLGATE_OTLP_ENDPOINT and not TOLLGATE_OTLP_ENDPOINT.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"TOLLGATE_OTLP_ENDPOINT must be an http:// or https:// URL, got {TOLLGATE_OTLP_ENDPOINT!r}")
# plain (one line of text per record) or json (one JSON object per line, with the request's ids): gateway_site/logs.py.
TOLLGATE_LOG_FORMAT = os.environ.get("TOLLGATE_LOG_FORMAT", "plain").strip().lower()
if TOLLGATE_LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"TOLLGATE_LOG_FORMAT must be plain or json, got {TOLLGATE_LOG_FORMAT!r}")

LOG_LEVEL = os.environ.get("TOLLGATE_LOG_LEVEL", "INFO").strip().upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"TOLLGATE_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"()": "gateway_site.logs.PlainFormatter", "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s"},
                   "json": {"()": "gateway_site.logs.JsonFormatter"}},
    "filters": {"request": {"()": "gateway_site.logs.RequestFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": TOLLGATE_LOG_FORMAT, "filters": ["request"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}
