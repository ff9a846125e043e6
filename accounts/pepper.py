"""Which pepper API key digests are made under, so a key is never issued under another one.

Every key's digest is an HMAC under TOLLGATE_KEY_PEPPER. A key issued by a process with another pepper (a
command run without the server's secrets, a regenerated secret file) is rejected by every request while the
admin lists it as active. The database keeps the pepper's fingerprint, an HMAC of a fixed label under it (never
the pepper), in one KeyPepper row: the first process to issue a key or start serving records it, and afterwards
keys are issued, and servers start, only under the pepper it names. ``rotate`` moves to a new pepper.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.utils import timezone

from . import keys
from .models import ApiKey, KeyPepper, ManagementToken

logger = logging.getLogger(__name__)

LABEL = b"tollgate:key-pepper-fingerprint:v1"
SHOWN = 12  # fingerprint characters shown in messages: enough to compare two, far from enough to guess the pepper


class PepperMismatch(ValidationError):
    """This process's pepper is not the one the database's keys were issued under."""


def fingerprint(pepper: str | None = None) -> str:
    """The HMAC-SHA256 of LABEL under the pepper (this process's when None), in hex."""
    key = settings.TOLLGATE_KEY_PEPPER if pepper is None else pepper
    return hmac.new(key.encode(), LABEL, hashlib.sha256).hexdigest()


def recorded() -> str | None:
    """The fingerprint keys are issued under, or None before the first key."""
    # The first row counts: two processes with different peppers racing on an empty table both insert.
    return KeyPepper.objects.order_by("pk").values_list("fingerprint", flat=True).first()


def require_current() -> None:
    """Record this process's pepper if none is recorded yet. Raises PepperMismatch if another one is."""
    mine = fingerprint()
    stored = recorded()
    if stored is None:
        stored = record(mine)
    if not hmac.compare_digest(stored, mine):
        raise PepperMismatch(mismatch_message(stored=stored, mine=mine))


def record(mine: str) -> str:
    """Record ``mine`` unless a fingerprint already is. Returns the one that counts."""
    try:
        with transaction.atomic():
            KeyPepper.objects.create(fingerprint=mine)
    except IntegrityError:
        pass  # another process recorded the same pepper first
    stored = recorded()
    assert stored is not None
    if stored != mine:
        KeyPepper.objects.filter(fingerprint=mine).delete()  # lost the race to another pepper: leave one row
    return stored


def mismatch_message(*, stored: str, mine: str) -> str:
    return (
        f"TOLLGATE_KEY_PEPPER is not the pepper this database's API keys were issued under (recorded fingerprint "
        f"{stored[:SHOWN]}, this process's {mine[:SHOWN]}): keys issued or checked with it would all be rejected. "
        "Give this process the pepper the keys were issued under (on the embedded default var/key_pepper, which "
        "commands read when run from the project folder or with ./tollgate manage); to change the pepper on purpose, "
        "see 'Rotating the key pepper' in the README."
    )


def startup_problem() -> str | None:
    """Why a server must not start under this pepper, or None. Records the pepper if none is recorded yet."""
    try:
        require_current()
    except PepperMismatch as e:
        return e.message
    except DatabaseError as e:
        # Serving does not wait for the database (ledger rows are spooled), so neither does this check.
        logger.warning("the key pepper could not be checked at startup (%s); issuing keys checks it again",
                       type(e).__name__)
    return None


def startup_problem_closing() -> str | None:
    try:
        return startup_problem()
    finally:
        connections.close_all()  # this thread ends here: hand its connection back


def check_before_serving() -> None:
    """Exit with one line on stderr if this process must not serve under its pepper. Run by the ASGI module."""
    # uvicorn's workers import the application inside their event loop, where the ORM refuses to run: use a thread.
    with ThreadPoolExecutor(max_workers=1) as thread:
        problem = thread.submit(startup_problem_closing).result()
    if problem:
        sys.stderr.write(f"Tollgate cannot start: {problem}\n")
        raise SystemExit(3)  # uvicorn's "failed to start": its supervisor stops rather than restart workers forever


@transaction.atomic
def rotate() -> tuple[int, int]:
    """Make this process's pepper the recorded one, revoking what the old one signed.

    Returns how many API keys and management tokens were revoked. Their digests are HMACs under the old pepper
    and no longer match anything presented, so they stay in the table as revoked rows, for the ledger's sake.
    """
    now = timezone.now()
    from audit.services import record_updates

    active_keys = list(ApiKey.objects.filter(revoked_at__isnull=True).only("pk", "tenant_id", "name", "prefix"))
    active_tokens = list(ManagementToken.objects.filter(revoked_at__isnull=True).only("pk", "name", "prefix"))
    key_prefixes = [key.prefix for key in active_keys]
    keys_revoked = ApiKey.objects.filter(revoked_at__isnull=True).update(revoked_at=now)
    tokens_revoked = ManagementToken.objects.filter(revoked_at__isnull=True).update(revoked_at=now)
    record_updates(instances=[*active_keys, *active_tokens], changes={"revoked_at": (None, now)}, verb="rotate pepper")
    KeyPepper.objects.all().delete()
    KeyPepper.objects.create(fingerprint=fingerprint())
    transaction.on_commit(lambda: keys.forget_many(key_prefixes))
    logger.info("key pepper rotated: %s keys and %s management tokens revoked", keys_revoked, tokens_revoked)
    return keys_revoked, tokens_revoked
