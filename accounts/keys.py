"""API key format, digests, and the cached key lookup behind /v1 authentication.

A key looks like ``tg-<prefix>-<secret>``. The prefix is a public id stored in clear (indexed, safe to
show and search); the database keeps only an HMAC-SHA256 of the whole key under a server pepper, so a
leaked table cannot be replayed. The ``tg-`` start lets secret scanners recognise our keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import caches
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gateway_site import changes

from .models import ApiKey

PREFIX_LENGTH = 12
SECRET_LENGTH = 40
_SECRET_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(rf"tg-([0-9a-f]{{{PREFIX_LENGTH}}})-([A-Za-z0-9]{{{SECRET_LENGTH}}})")
_MISSING = "missing"  # cached for unknown prefixes, so garbage keys do not reach the database each time


class KeyRejected(Exception):
    """A presented key cannot be used. ``reason`` is one of the class constants."""

    MALFORMED, UNKNOWN, REVOKED, EXPIRED, TENANT_INACTIVE = "malformed", "unknown", "revoked", "expired", "tenant_inactive"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Minted:
    secret: str
    prefix: str
    digest: str


@dataclass(frozen=True)
class Limits:
    """Rate limits of a key or a tenant; None means no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.requests_per_minute, self.tokens_per_minute, self.max_concurrent))


def limits_of(holder: object) -> Limits:
    return Limits(requests_per_minute=getattr(holder, "requests_per_minute", None),
                  tokens_per_minute=getattr(holder, "tokens_per_minute", None),
                  max_concurrent=getattr(holder, "max_concurrent", None))


@dataclass(frozen=True)
class Caller:
    """Who is calling /v1: everything later steps need, without touching the database."""

    key_id: int
    key_prefix: str
    tenant_id: int
    tenant_slug: str
    allowed_models: tuple[str, ...]
    key_limits: Limits = Limits()
    tenant_limits: Limits = Limits()
    tenant_models: tuple[str, ...] = ()  # the operator's allow-list of the tenant; the key's can only narrow it
    response_cache: str = "route"  # the key's choice: "route" (as each route says), "on" or "off"
    project_id: int | None = None  # the key's project: its requests' rows and project budgets name it

    def may_use(self, *names: str) -> bool:
        """Whether both allow-lists admit the model, known by any of ``names`` (its public name, an alias)."""
        return self.refused_by(*names) is None

    def refused_by(self, *names: str) -> str | None:
        """"tenant" or "key": the allow-list that leaves out every one of ``names``; None when both admit one."""
        if self.tenant_models and not any(name in self.tenant_models for name in names):
            return "tenant"
        if self.allowed_models and not any(name in self.allowed_models for name in names):
            return "key"
        return None


@dataclass(frozen=True)
class KeyRecord:
    """What the key cache holds for one prefix."""

    caller: Caller
    digest: str
    revoked_at: datetime | None
    expires_at: datetime | None
    tenant_active: bool
    last_used_at: datetime | None


def digest(presented: str) -> str:
    return hmac.new(settings.TOLLGATE_KEY_PEPPER.encode(), presented.encode(), hashlib.sha256).hexdigest()


def mint() -> Minted:
    """Return a new random key, its public prefix and its digest."""
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    secret = f"tg-{prefix}-" + "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    return Minted(secret=secret, prefix=prefix, digest=digest(secret))


def parse_prefix(presented: str) -> str | None:
    """Return the public prefix of a well-formed key, or None."""
    match = _KEY_RE.fullmatch(presented)
    return match.group(1) if match else None


def cache_key(prefix: str) -> str:
    return f"apikey:v4:{prefix}"  # v4: records carry the key's response cache choice


# This process's copy of recent lookups, in front of the shared cache: a warm key costs no I/O and no
# thread hop. It lives TOLLGATE_KEY_LOCAL_CACHE_SECONDS; forget() drops it at once in this process, and in every
# other process within a second (gateway_site/changes.py).
_local: dict[str, tuple[float, KeyRecord | str]] = {}
_LOCAL_MAX = 50_000  # garbage keys cannot grow it without bound
_ANNOUNCE_MAX = 100  # more prefixes than this in one change: every process drops its whole copy instead


def forget(prefix: str) -> None:
    forget_many([prefix])


def forget_many(prefixes: list[str]) -> None:
    """Drop the keys' cached records: here and in the shared cache now, in every process after commit."""
    if not prefixes:
        return
    delete_shared(prefixes)
    # A lookup that raced with the change may have cached the old row again: drop it once more after commit.
    transaction.on_commit(lambda: delete_shared(prefixes))
    changes.announce("key", " ".join(prefixes) if len(prefixes) <= _ANNOUNCE_MAX else changes.ALL)


def forget_tenant(tenant_id: int) -> None:
    """Drop the cached records of every key of the tenant (they carry its state, limits and models), as forget_many."""
    prefixes = list(ApiKey.objects.filter(tenant_id=tenant_id).values_list("prefix", flat=True))
    delete_shared(prefixes)
    transaction.on_commit(lambda: delete_shared(prefixes))
    changes.announce("tenant", str(tenant_id))


def delete_shared(prefixes: list[str]) -> None:
    if prefixes:
        caches["default"].delete_many([cache_key(prefix) for prefix in prefixes])


def drop_local(detail: str) -> None:
    """Change handler: drop this process's copies of the space-separated prefixes, or all of them."""
    if detail == changes.ALL:
        _local.clear()
    for prefix in detail.split():
        _local.pop(prefix, None)


def drop_local_tenant(detail: str) -> None:
    """Change handler: drop this process's copies of the tenant's keys (by id), or all of them."""
    if detail == changes.ALL:
        _local.clear()
        return
    tenant_id = int(detail)
    # A copy of the items: lookups on the event loop may add entries while this runs in another thread.
    for prefix, (_, record) in list(_local.items()):
        if isinstance(record, KeyRecord) and record.caller.tenant_id == tenant_id:
            _local.pop(prefix, None)


def remember_locally(prefix: str, record: KeyRecord | str) -> None:
    if len(_local) >= _LOCAL_MAX:
        _local.clear()
    _local[prefix] = (time.monotonic() + settings.TOLLGATE_KEY_LOCAL_CACHE_SECONDS, record)


def lookup_local(presented: str, *, now: datetime | None = None) -> Caller | None:
    """Return the Caller from this process's copy, or None when it has none. Raises KeyRejected. No I/O."""
    prefix = parse_prefix(presented)
    if prefix is None:
        raise KeyRejected(KeyRejected.MALFORMED)
    entry = _local.get(prefix)
    if entry is None or entry[0] <= time.monotonic():
        return None
    return check(entry[1], presented, now or timezone.now())


def lookup(presented: str, *, now: datetime | None = None) -> Caller:
    """Return the Caller for a presented key. Raises KeyRejected. Cache first: 0 queries warm, 1 cold."""
    now = now or timezone.now()
    caller = lookup_local(presented, now=now)
    if caller is not None:
        return caller
    prefix = parse_prefix(presented)
    assert prefix is not None  # lookup_local rejected malformed keys
    cache = caches["default"]
    record = cache.get(cache_key(prefix))
    cold = record is None
    if record is None:
        record = load_record(prefix) or _MISSING
        cache.set(cache_key(prefix), record, settings.TOLLGATE_KEY_CACHE_SECONDS)
    remember_locally(prefix, record)
    caller = check(record, presented, now)
    if cold and isinstance(record, KeyRecord):
        touch_if_stale(record, now)
    return caller


def check(record: KeyRecord | str, presented: str, now: datetime) -> Caller:
    """Return the record's Caller if the presented key matches and may be used. Raises KeyRejected."""
    if isinstance(record, str) or not hmac.compare_digest(record.digest, digest(presented)):
        raise KeyRejected(KeyRejected.UNKNOWN)
    if record.revoked_at is not None:
        raise KeyRejected(KeyRejected.REVOKED)
    if record.expires_at is not None and record.expires_at <= now:
        raise KeyRejected(KeyRejected.EXPIRED)
    if not record.tenant_active:
        raise KeyRejected(KeyRejected.TENANT_INACTIVE)
    return record.caller


def load_record(prefix: str) -> KeyRecord | None:
    key = ApiKey.objects.select_related("tenant").filter(prefix=prefix).first()
    return None if key is None else record_of(key)


def caller_by_id(key_id: int, *, now: datetime | None = None) -> Caller:
    """The Caller of a key known by its id, for work the key started earlier (a batch's lines): no secret is
    presented, but the key must still be usable now. Raises KeyRejected (unknown, revoked, expired, tenant inactive)."""
    key = ApiKey.objects.select_related("tenant").filter(pk=key_id).first()
    if key is None:
        raise KeyRejected(KeyRejected.UNKNOWN)
    # The same refusals as check(), in the same order, without the digest: no secret is presented.
    now = now or timezone.now()
    if key.revoked_at is not None:
        raise KeyRejected(KeyRejected.REVOKED)
    if key.expires_at is not None and key.expires_at <= now:
        raise KeyRejected(KeyRejected.EXPIRED)
    if not key.tenant.is_active:
        raise KeyRejected(KeyRejected.TENANT_INACTIVE)
    return record_of(key).caller


def record_of(key: ApiKey) -> KeyRecord:
    caller = Caller(
        key_id=key.pk,
        key_prefix=key.prefix,
        tenant_id=key.tenant_id,
        tenant_slug=key.tenant.slug,
        allowed_models=tuple(key.allowed_models or ()),
        key_limits=limits_of(key),
        tenant_limits=limits_of(key.tenant),
        tenant_models=tuple(key.tenant.allowed_models or ()),
        response_cache=key.response_cache,
        project_id=key.project_id,
    )
    return KeyRecord(
        caller=caller,
        digest=key.digest,
        revoked_at=key.revoked_at,
        expires_at=key.expires_at,
        tenant_active=key.tenant.is_active,
        last_used_at=key.last_used_at,
    )


def touch_if_stale(record: KeyRecord, now: datetime) -> None:
    # Only on a cold lookup, and only when the stored time is older than the touch interval: the
    # warm path never writes, so last_used_at costs at most one UPDATE per key per interval.
    cutoff = now - timedelta(seconds=settings.TOLLGATE_KEY_TOUCH_SECONDS)
    if record.last_used_at is not None and record.last_used_at > cutoff:
        return
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lte=cutoff)
    ApiKey.objects.filter(stale, pk=record.caller.key_id).update(last_used_at=now)
