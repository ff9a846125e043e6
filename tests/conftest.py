from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from django.db import connection

from accounts import keys
from accounts.models import ApiKey, Tenant

from .factories import make_key, make_tenant, make_user
from .live import mock_upstream_server, tollgate_server


@dataclass
class Party:
    """A tenant with an owner and one API key: alice is the caller, bob is someone else."""

    tenant: Tenant
    user: User
    key: ApiKey
    secret: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def room_in_this_minute(seconds: float = 10) -> None:
    """Wait, when fewer than ``seconds`` are left, for the next calendar minute: /v1's rate limits count per calendar
    minute, and a test that counts several requests against one must not straddle two."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)


def make_party(slug: str) -> Party:
    tenant = make_tenant(slug, contact_emails=[f"{slug}@example.com"])
    user = make_user(slug, tenant=tenant)
    key, secret = make_key(tenant, name=f"{slug}'s key")
    return Party(tenant=tenant, user=user, key=key, secret=secret)


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real three-node Redis Cluster started for the test module (skipped where redis-server cannot run)."""
    from . import redis_servers

    if reason := redis_servers.available():
        pytest.skip(reason)
    with redis_servers.cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture
def alice(db: None) -> Party:
    return make_party("alice")


@pytest.fixture
def bob(db: None) -> Party:
    return make_party("bob")


@pytest.fixture(autouse=True)
def clear_caches() -> Iterator[None]:
    # Key lookups are cached; a row rolled back by one test must not answer from the cache in the next.
    for alias in ("default", "limits"):
        caches[alias].clear()
    keys._local.clear()
    # Per-process copies of budgets and prices, and the chosen hold/limit backends (tests switch settings).
    from billing import holds, live, pricing
    from proxy import breaker, limits, ratelimits

    limits.forget_budgets()
    breaker.reset_breaker()
    pricing.forget()
    holds.reset_backend()
    ratelimits.reset_limiter()
    live.forget_listeners()
    yield


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_redis") and not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL (a real Redis server)")
    if item.get_closest_marker("needs_postgres") and connection.vendor != "postgresql":
        pytest.skip("needs DATABASE_URL pointing at PostgreSQL")


@pytest.fixture(scope="session")
def mock_upstream_url() -> Iterator[str]:
    with mock_upstream_server() as url:
        yield url


@pytest.fixture(scope="session")
def live_server_url(django_db_setup: None, mock_upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from django.db import connection

    log = tmp_path_factory.mktemp("live") / "tollgate.log"
    with tollgate_server(connection.settings_dict["NAME"], log, TOLLGATE_UPSTREAM_READ_TIMEOUT="2") as url:
        yield url
