from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import (
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    connection,
    transaction,
)
from django.db.models import Field
from django.utils import timezone

from accounts.models import ApiKey

from . import pricing, tokens
from .models import Budget, UsageRecord

logger = logging.getLogger(__name__)

# The database itself cannot take rows (down, or its schema is not ours): every row fails alike, so the caller
# must keep them and retry. Any other error is about the data of some row, and only that row is sanitized.
DATABASE_FAILURES = (OperationalError, InterfaceError, InternalError, ProgrammingError, NotSupportedError)
SANITIZED = {"error": "row sanitized"}
MAX_INT = 2_147_483_647  # PositiveIntegerField on PostgreSQL
MAX_SMALL = 32_767


@dataclass
class UsageEntry:
    """Everything the /v1 path knows about one request when it ends."""

    tenant_id: int
    key_id: int | None
    endpoint: str
    end_reason: str
    status_code: int
    public_model: str = ""
    provider: str = ""
    upstream_model: str = ""
    stream: bool = False
    prompt_tokens: int | None = None  # None: the provider reported no usage, estimate from the texts below
    completion_tokens: int | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # prompt tokens written to the provider's prompt cache (part of prompt_tokens)
    images: int = 0  # input images, for per-image prices
    prompt_texts: list[str] = field(default_factory=list)
    completion_text: str = ""
    chat: bool = True
    error_code: str = ""
    latency_ms: int = 0
    ttfb_ms: int | None = None
    request_id: str | None = None
    created_at: datetime | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False  # answered from the response cache: the provider was not asked
    free: bool = False  # the row costs nothing (a cache hit on a route whose hits are free)
    batch_id: str = ""  # a batch line's batch (public id) and custom_id; the ledger keeps one row per line
    custom_id: str = ""
    project_id: int | None = None  # the key's project when the request ran
    tags: str = ""  # billing.tags' stored form, ",a,b,"
    end_user: str = ""  # the request's `user` field


def carry_key_budgets(*, old: ApiKey, new: ApiKey) -> int:
    """Move the budgets of a rotated key to its replacement; their periods keep what the old key spent."""
    moved = 0
    for budget in Budget.objects.filter(key=old):
        budget.key = new
        budget.save(update_fields=["key"])  # the signal drops this process's budget table
        moved += 1
    return moved


def record_usage(*, entry: UsageEntry) -> UsageRecord:
    """Write one request's ledger row, estimating tokens the provider did not report. Returns it (id not read back)."""
    return record_usages(entries=[entry])[0]


def record_usages(*, entries: list[UsageEntry]) -> list[UsageRecord]:
    """Build and write the rows of several requests. Returns the rows (with their tokens and cost).

    Raises only when the database cannot be reached (see insert_records); then no row may be assumed written,
    and writing the same rows again is safe.
    """
    records = build_records(entries)
    insert_records(records)
    return records


def build_records(entries: list[UsageEntry]) -> list[UsageRecord]:
    """One row per entry, tokens estimated and priced. Never raises: an entry that cannot be built is sanitized.

    CPU only: no database access but the cached price table.
    """
    records = []
    for entry in entries:
        try:
            records.append(build_record(entry))
        except Exception as e:
            report_sanitized(getattr(entry, "request_id", None), e)
            records.append(minimal_record(entry))
    return records


def report_sanitized(request_id: object, error: BaseException) -> None:
    # The error's message can quote the prompt or the answer: name its type and where it was raised, nothing else.
    request_id = request_id.hex if isinstance(request_id, uuid.UUID) else request_id
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame else "?"
    logger.error("usage row of request %s written in minimal form: %s at %s", request_id, type(error).__name__, where)


def build_record(entry: UsageEntry) -> UsageRecord:
    source = UsageRecord.Source.CACHE if entry.from_cache else UsageRecord.Source.PROVIDER
    prompt, completion = entry.prompt_tokens, entry.completion_tokens
    if prompt is None or completion is None:
        source = UsageRecord.Source.CACHE if entry.from_cache else UsageRecord.Source.ESTIMATED
        estimated = tokens.estimate(entry.prompt_texts, entry.completion_text,
                                    model=entry.upstream_model or entry.public_model, chat=entry.chat)
        prompt = estimated[0] if prompt is None else prompt
        completion = estimated[1] if completion is None else completion
    if "\\u0000" in json.dumps(entry.gate):  # not JSON, or a NUL that jsonb refuses: fails here, in this row only
        raise ValueError("gate cannot be stored")
    record = UsageRecord(
        tenant_id=entry.tenant_id,
        key_id=entry.key_id,
        endpoint=entry.endpoint,
        public_model=entry.public_model[:200],
        provider=entry.provider,
        upstream_model=entry.upstream_model[:200],
        stream=entry.stream,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=entry.cached_tokens,
        cache_write_tokens=entry.cache_write_tokens,
        images=entry.images,
        usage_source=source,
        end_reason=entry.end_reason,
        error_code=entry.error_code[:64],
        status_code=entry.status_code,
        latency_ms=entry.latency_ms,
        ttfb_ms=entry.ttfb_ms,
        gate=entry.gate,
        created_at=entry.created_at or timezone.now(),
        batch_id=entry.batch_id,
        custom_id=entry.custom_id,
        project_id=entry.project_id,
        tags=entry.tags,
        end_user=entry.end_user,
    )
    if entry.request_id:
        record.request_id = uuid.UUID(str(entry.request_id))
    if not entry.free:  # a free row has no price: its cost is zero by policy, not by a price of zero
        price_record(record)
    check_storable(record)
    return record


@functools.cache
def _limits() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
    texts = tuple((f.attname, f.max_length or 0) for f in UsageRecord._meta.concrete_fields
                  if f.get_internal_type() == "CharField")
    tops = {"PositiveIntegerField": MAX_INT, "PositiveSmallIntegerField": MAX_SMALL}
    numbers = tuple((f.attname, tops[f.get_internal_type()]) for f in UsageRecord._meta.concrete_fields
                    if f.get_internal_type() in tops)
    return texts, numbers


def check_storable(record: UsageRecord) -> None:
    """Raise ValueError for a value some database would refuse, so that every database refuses the same rows, here,
    one at a time, instead of failing a whole INSERT (SQLite takes long strings and big numbers that PostgreSQL does not)."""
    texts, numbers = _limits()
    for name, length in texts:
        value = getattr(record, name)
        if not isinstance(value, str) or len(value) > length or "\x00" in value:
            raise ValueError(f"{name} cannot be stored")
    for name, top in numbers:
        value = getattr(record, name)
        if value is not None and not (isinstance(value, int) and 0 <= value <= top):
            raise ValueError(f"{name} out of range")


def price_record(record: UsageRecord) -> None:
    """Set the row's exact cost from the price in force on its day; a model with no price is flagged, at zero cost."""
    if not record.upstream_model or record.ttfb_ms is None:
        return  # no answer ever came back (refused, failed or abandoned first): nothing to pay
    price = pricing.price_for(public_model=record.public_model, provider=record.provider,
                              upstream_model=record.upstream_model, on=record.created_at.date())
    if price is None:
        record.unpriced = True
        return
    record.price = price
    record.cost_picos = price.cost_picos(prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
                                         cached_tokens=record.cached_tokens,
                                         cache_write_tokens=record.cache_write_tokens, images=record.images)
    if record.batch_id:
        record.cost_picos = discounted(record.cost_picos, batch_discount(record, price))


def batch_discount(record: UsageRecord, price: Any) -> Decimal:
    """A batch line's discount in percent: its route's (noted in the row's gate when the route sets one), else the
    price's. Kept in the gate so a replayed or recovered row prices exactly as the first one did."""
    noted = record.gate.get("batch_discount_percent") if isinstance(record.gate, dict) else None
    try:
        return Decimal(str(noted)) if noted is not None else Decimal(price.batch_discount_percent or 0)
    except ArithmeticError:
        return Decimal(0)


def discounted(cost_picos: int, percent: Decimal) -> int:
    """The cost less ``percent`` (0-100, two decimals): in whole picos, rounded half up, as integer arithmetic."""
    hundredths = min(max(int(percent * 100), 0), 10_000)
    if not hundredths:
        return cost_picos
    return (cost_picos * (10_000 - hundredths) * 2 + 10_000) // 20_000


def text(value: object, length: int) -> str:
    return (value if isinstance(value, str) else "").replace("\x00", "")[:length]


def whole(value: object, top: int = MAX_INT) -> int:
    return min(max(value, 0), top) if isinstance(value, int) and not isinstance(value, bool) else 0


def minimal_record(source: UsageEntry | UsageRecord) -> UsageRecord:
    """The row in a form any database takes: known tokens and the cost they price at, no estimation, names cleaned,
    the gate kept only if it can be stored. Never raises."""
    get = functools.partial(getattr, source)
    endpoints, reasons = UsageRecord.Endpoint.values, UsageRecord.EndReason.values
    record = UsageRecord(
        tenant_id=get("tenant_id", None), key_id=get("key_id", None),
        endpoint=get("endpoint", "") if get("endpoint", "") in endpoints else UsageRecord.Endpoint.CHAT,
        end_reason=get("end_reason", "") if get("end_reason", "") in reasons else UsageRecord.EndReason.GATEWAY_ERROR,
        status_code=whole(get("status_code", 0), MAX_SMALL),
        public_model=text(get("public_model", ""), 200), provider=text(get("provider", ""), 64),
        upstream_model=text(get("upstream_model", ""), 200), stream=get("stream", False) is True,
        prompt_tokens=whole(get("prompt_tokens", 0)), completion_tokens=whole(get("completion_tokens", 0)),
        cached_tokens=whole(get("cached_tokens", 0)), cache_write_tokens=whole(get("cache_write_tokens", 0)),
        images=whole(get("images", 0), MAX_SMALL),
        usage_source=UsageRecord.Source.CACHE if get("from_cache", False) is True else UsageRecord.Source.ESTIMATED,
        error_code=text(get("error_code", ""), 64), latency_ms=whole(get("latency_ms", 0)),
        ttfb_ms=whole(get("ttfb_ms", None)) if get("ttfb_ms", None) is not None else None,
        gate=storable_gate(get("gate", None)),
        batch_id=text(get("batch_id", ""), 40), custom_id=text(get("custom_id", ""), 200),
        project_id=whole(get("project_id", None)) if get("project_id", None) is not None else None,
        tags=text(get("tags", ""), 1100), end_user=text(get("end_user", ""), 256),
    )
    created = get("created_at", None)
    record.created_at = created if isinstance(created, datetime) else timezone.now()
    try:
        record.request_id = uuid.UUID(str(get("request_id", None) or record.request_id))
    except ValueError:
        pass  # a new id: this row is not recognised again when replayed, but it is written
    try:
        if get("free", False) is not True:
            price_record(record)
    except Exception:
        record.price, record.cost_picos, record.unpriced = None, 0, True
    return record


def storable_gate(gate: object) -> dict[str, Any]:
    if isinstance(gate, dict):
        try:
            # A NUL (even escaped) is refused by PostgreSQL's jsonb.
            if "\\u0000" not in json.dumps(gate):
                return {**gate, **SANITIZED}
        except Exception:
            pass
    return dict(SANITIZED)


@functools.cache
def _insert_sql() -> tuple[str, str, str, tuple[Field[Any, Any], ...]]:
    fields = tuple(f for f in UsageRecord._meta.concrete_fields if not f.primary_key)
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    # A row whose request id (or batch line) is in the ledger already is skipped: writing a batch again (a retry, a
    # journal replayed after a crash) never bills a request twice. PostgreSQL and SQLite (3.24+) both read this.
    tail = " ON CONFLICT DO NOTHING"
    return f"INSERT INTO {table} ({columns}) VALUES ", "(" + ", ".join(["%s"] * len(fields)) + ")", tail, fields


def insert_records(records: list[UsageRecord]) -> None:
    """Insert the rows, skipping those already in the ledger. Raises only when the database cannot take rows
    (unreachable: OperationalError, InterfaceError; or not ours to write); a row it refuses for its data is
    written in minimal form, or, if even that is refused, logged and left out."""
    if not records:
        return
    try:
        # One statement: all rows or none. No savepoint around it: rows are checked as they are built, so a
        # refusal here is rare, and in production (autocommit) a failed statement changes nothing anyway.
        insert_many(records, guarded=False)
        return
    except DATABASE_FAILURES:
        raise
    except Exception as e:
        if len(records) > 1:
            logger.warning("a batch of %d usage rows was refused (%s); writing them one by one", len(records),
                           type(e).__name__)
    for record in records:
        insert_alone(record)


def insert_alone(record: UsageRecord) -> None:
    try:
        insert_many([record])
        return
    except DATABASE_FAILURES:
        raise
    except Exception as e:
        report_sanitized(record.request_id, e)
    try:
        insert_many([minimal_record(record)])
    except DATABASE_FAILURES:
        raise
    except Exception as e:
        logger.error("usage row of request %s (tenant %s) refused even in minimal form: %s", record.request_id,
                     record.tenant_id, type(e).__name__)


@contextmanager
def statement() -> Iterator[None]:
    # Outside a transaction a failed statement changes nothing. Inside one (a caller's, or a test's) it would
    # abort the whole transaction on PostgreSQL: a savepoint confines the failure to this statement.
    with transaction.atomic() if connection.in_atomic_block else nullcontext():
        yield


def insert_many(records: list[UsageRecord], *, guarded: bool = True) -> None:
    # One plain multi-row INSERT: the ledger is append-only with no save signals, and Model.save's
    # bookkeeping was a tenth of the CPU of a /v1 request. Ids are not needed, so none are read back.
    head, row, tail, fields = _insert_sql()
    values = [f.get_db_prep_save(getattr(record, f.attname), connection) for record in records for f in fields]
    with statement() if guarded else nullcontext(), connection.cursor() as cursor:
        cursor.execute(head + ", ".join([row] * len(records)) + tail, values)
