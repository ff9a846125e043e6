from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.utils import timezone

from accounts import keys, services
from accounts.keys import KeyRejected, lookup
from accounts.models import ApiKey

from ..conftest import Party
from ..factories import make_key


def go_cold() -> None:
    """Forget every cached lookup, shared and in-process."""
    caches["default"].clear()
    keys._local.clear()


def rejected_reason(secret: str) -> str:
    with pytest.raises(KeyRejected) as info:
        lookup(secret)
    return info.value.reason


def test_issued_key_is_recognizable_and_stored_only_as_digest(alice: Party) -> None:
    assert alice.secret.startswith(f"tg-{alice.key.prefix}-")
    assert len(alice.secret) == len("tg-") + keys.PREFIX_LENGTH + 1 + keys.SECRET_LENGTH
    expected = hmac.new(settings.TOLLGATE_KEY_PEPPER.encode(), alice.secret.encode(), hashlib.sha256).hexdigest()
    row = ApiKey.objects.get(pk=alice.key.pk)
    assert row.digest == expected
    assert alice.secret.split("-")[2] not in {row.prefix, row.digest, row.name}


def test_lookup_returns_the_caller_of_the_key(alice: Party) -> None:
    caller = lookup(alice.secret)
    assert (caller.key_id, caller.tenant_id, caller.tenant_slug) == (alice.key.pk, alice.tenant.pk, "alice")
    assert caller.allowed_models == ()
    assert caller.may_use("anything")


def test_allowed_models_restrict_the_caller(alice: Party) -> None:
    _, secret = make_key(alice.tenant, allowed_models=["demo"])
    caller = lookup(secret)
    assert caller.may_use("demo") and not caller.may_use("gpt-4o")


def test_query_budget_cold_cache_one_query_warm_cache_none(alice: Party, django_assert_num_queries) -> None:
    ApiKey.objects.filter(pk=alice.key.pk).update(last_used_at=timezone.now())
    # cold: the key lookup (joined with its tenant); last_used_at is fresh, so no touch
    with django_assert_num_queries(1):
        lookup(alice.secret)
    # warm: served from the cache
    with django_assert_num_queries(0):
        lookup(alice.secret)


def test_last_used_is_written_at_most_once_per_interval(alice: Party, django_assert_num_queries) -> None:
    now = timezone.now()
    # cold and never used: the lookup, then one conditional UPDATE of last_used_at
    with django_assert_num_queries(2):
        lookup(alice.secret, now=now)
    assert ApiKey.objects.get(pk=alice.key.pk).last_used_at == now
    go_cold()
    # cold again within the interval: the lookup sees a fresh last_used_at and writes nothing
    with django_assert_num_queries(1):
        lookup(alice.secret, now=now + timedelta(seconds=30))
    go_cold()
    later = now + timedelta(seconds=settings.TOLLGATE_KEY_TOUCH_SECONDS + 1)
    lookup(alice.secret, now=later)
    assert ApiKey.objects.get(pk=alice.key.pk).last_used_at == later


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "sk-proj-1234",
        "tg-",
        "tg-zzzzzzzzzzzz-" + "a" * 40,  # prefix is not hex
        "tg-0123456789ab-" + "a" * 39,  # secret too short
        "tg-0123456789ab-" + "a" * 40 + "\n",
    ],
)
def test_malformed_keys_are_rejected_without_a_query(presented: str, db: None, django_assert_num_queries) -> None:
    with django_assert_num_queries(0):
        assert rejected_reason(presented) == KeyRejected.MALFORMED


def test_unknown_key_is_rejected_and_negatively_cached(db: None, django_assert_num_queries) -> None:
    unknown = keys.mint().secret
    with django_assert_num_queries(1):
        assert rejected_reason(unknown) == KeyRejected.UNKNOWN
    with django_assert_num_queries(0):
        assert rejected_reason(unknown) == KeyRejected.UNKNOWN


def test_right_prefix_wrong_secret_is_unknown(alice: Party) -> None:
    forged = alice.secret[:-1] + ("A" if alice.secret[-1] != "A" else "B")
    assert rejected_reason(forged) == KeyRejected.UNKNOWN
    lookup(alice.secret)  # warm cache; the forged key still fails against the cached digest
    assert rejected_reason(forged) == KeyRejected.UNKNOWN


def test_revoked_key_is_rejected_at_once_in_this_process(alice: Party) -> None:
    lookup(alice.secret)  # cached as valid
    services.revoke_key(key=alice.key)
    assert rejected_reason(alice.secret) == KeyRejected.REVOKED


def test_revoking_twice_is_refused(alice: Party) -> None:
    services.revoke_key(key=alice.key)
    with pytest.raises(services.KeyNotActive):
        services.revoke_key(key=alice.key)


def test_expired_key_is_rejected(alice: Party) -> None:
    key, secret = make_key(alice.tenant, expires_at=timezone.now() + timedelta(hours=1))
    lookup(secret)
    assert rejected_reason_at(secret, timezone.now() + timedelta(hours=2)) == KeyRejected.EXPIRED


def rejected_reason_at(secret: str, now: object) -> str:
    with pytest.raises(KeyRejected) as info:
        lookup(secret, now=now)  # type: ignore[arg-type]
    return info.value.reason


def test_key_cannot_be_issued_already_expired(alice: Party) -> None:
    with pytest.raises(ValidationError):
        make_key(alice.tenant, expires_at=timezone.now() - timedelta(seconds=1))


def test_inactive_tenant_keys_are_rejected(alice: Party) -> None:
    lookup(alice.secret)
    alice.tenant.is_active = False
    alice.tenant.save()
    services.forget_tenant_keys(tenant=alice.tenant)
    assert rejected_reason(alice.secret) == KeyRejected.TENANT_INACTIVE


def test_rotate_replaces_the_key_and_invalidates_the_old_one_at_once(alice: Party) -> None:
    _, limited_secret = make_key(alice.tenant, name="ci", allowed_models=["demo"])
    old = ApiKey.objects.get(prefix=keys.parse_prefix(limited_secret))
    lookup(limited_secret)
    new, new_secret = services.rotate_key(key=old)
    assert rejected_reason(limited_secret) == KeyRejected.REVOKED
    caller = lookup(new_secret)
    assert caller.key_id == new.pk and caller.allowed_models == ("demo",)
    assert (new.name, new.rotated_from_id) == ("ci", old.pk)


@override_settings(
    CACHES={
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "other-process"},
        "limits": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "other-process-limits"},
    }
)
def test_rotate_reaches_a_process_with_its_own_cache_within_the_ttl(alice: Party) -> None:
    # Another server process keeps what it cached until the TTL ends; then the old key fails there too.
    # (With Redis the shared entry is dropped at once and only the short in-process copy remains.)
    lookup(alice.secret)
    cached = caches["default"].get(keys.cache_key(alice.key.prefix))
    local = keys._local[alice.key.prefix]
    services.rotate_key(key=alice.key)
    # the other process still holds the entries it cached before the rotate
    caches["default"].set(keys.cache_key(alice.key.prefix), cached, settings.TOLLGATE_KEY_CACHE_SECONDS)
    keys._local[alice.key.prefix] = local
    assert lookup(alice.secret).key_id == alice.key.pk
    after_ttl = timezone.now().timestamp() + settings.TOLLGATE_KEY_CACHE_SECONDS + 1
    later = keys.time.monotonic() + settings.TOLLGATE_KEY_CACHE_SECONDS + 1
    with mock.patch("django.core.cache.backends.locmem.time.time", return_value=after_ttl), \
            mock.patch("accounts.keys.time.monotonic", return_value=later):
        assert rejected_reason(alice.secret) == KeyRejected.REVOKED


@pytest.mark.needs_redis
def test_with_redis_a_revoke_drops_the_shared_entry_at_once(alice: Party) -> None:
    from django_redis import get_redis_connection

    lookup(alice.secret)
    redis = get_redis_connection("default")
    assert redis.exists(caches["default"].make_key(keys.cache_key(alice.key.prefix)))
    services.revoke_key(key=alice.key)
    assert not redis.exists(caches["default"].make_key(keys.cache_key(alice.key.prefix)))


def test_bob_cannot_see_alices_keys(alice: Party, bob: Party) -> None:
    visible = set(ApiKey.objects.visible_to(bob.user).values_list("pk", flat=True))
    assert visible == {bob.key.pk}
    assert alice.key.pk not in visible
    assert lookup(bob.secret).tenant_id == bob.tenant.pk


@override_settings(
    CACHES={
        # A Redis nobody listens on: the shared key cache is down.
        "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/0",
                    "OPTIONS": {"IGNORE_EXCEPTIONS": True, "SOCKET_CONNECT_TIMEOUT": 0.2}},
        "limits": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "limits-redis-down"},
    }
)
def test_keys_still_work_from_the_database_when_the_cache_is_down(alice: Party, django_assert_num_queries) -> None:
    keys._local.clear()
    ApiKey.objects.filter(pk=alice.key.pk).update(last_used_at=timezone.now())
    with django_assert_num_queries(1):
        assert lookup(alice.secret).key_id == alice.key.pk
    services.revoke_key(key=alice.key)
    assert rejected_reason(alice.secret) == KeyRejected.REVOKED
