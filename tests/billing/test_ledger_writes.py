"""The ledger writer: a bad entry never costs other requests their rows, and writing a row twice bills it once."""

from __future__ import annotations

import logging
import uuid
from datetime import date
from decimal import Decimal
from unittest import mock

import pytest
from django.db import OperationalError

from billing import pricing, services
from billing.models import Price, UsageRecord
from billing.services import UsageEntry, build_records, insert_records, record_usages

from ..conftest import Party

SECRET = "the prompt says swordfish"


def entry(party: Party, i: int, **fields: object) -> UsageEntry:
    values: dict[str, object] = {
        "tenant_id": party.tenant.pk, "key_id": party.key.pk, "endpoint": "chat", "end_reason": "complete",
        "status_code": 200, "public_model": "mini", "provider": "openai", "upstream_model": "mini",
        "prompt_tokens": 10, "completion_tokens": 5, "ttfb_ms": 4, "request_id": uuid.UUID(int=i).hex,
        "gate": {"rate": {"admitted": True}}, **fields}
    return UsageEntry(**values)  # type: ignore[arg-type]


def poisons(party: Party, start: int) -> list[UsageEntry]:
    """Twenty entries, each wrong in a way seen or feared in production."""
    kinds: list[dict[str, object]] = [
        # A content part whose text is not a string reaches the estimator.
        {"prompt_tokens": None, "completion_tokens": None, "prompt_texts": [5, SECRET], "completion_text": SECRET},
        {"public_model": "mi\x00ni", "upstream_model": "mi\x00ni"},  # PostgreSQL refuses NUL in text
        {"completion_tokens": -3},  # a provider's miscount: the column is unsigned
        {"status_code": 70_000},  # beyond a smallint
        {"gate": {"note": object()}},  # not JSON
        {"gate": {"note": "a\x00b"}},  # JSON, but not for jsonb
        {"public_model": "m" * 5000, "provider": "p" * 500},
        {"prompt_tokens": 3_000_000_000},  # beyond an integer column
        {"request_id": "not-a-uuid"},
        {"endpoint": "x" * 40, "end_reason": "y" * 40},
    ]
    return [entry(party, start + i, **kinds[i % len(kinds)]) for i in range(20)]


@pytest.fixture
def mini(db: None) -> Price:
    price = Price.objects.create(model="mini", effective_from=date(2020, 1, 1), input_per_million=Decimal("0.15"),
                                 output_per_million=Decimal("0.60"))
    pricing.forget()
    return price


@pytest.mark.django_db(transaction=True)
def test_twenty_poison_entries_in_a_batch_of_200_from_several_tenants_lose_no_row(
    alice: Party, bob: Party, mini: Price, caplog: pytest.LogCaptureFixture
) -> None:
    good = [entry(alice if i % 2 else bob, i) for i in range(180)]
    bad = poisons(alice, 1000)
    batch = good[:90] + bad + good[90:]
    with caplog.at_level(logging.WARNING, logger="billing.services"):
        records = record_usages(entries=batch)

    assert len(records) == 200 and UsageRecord.objects.count() == 200
    assert UsageRecord.objects.filter(tenant=bob.tenant).count() == 90
    # Every good row is whole and priced: 10 x 0.15 + 5 x 0.60 micro-dollars.
    for row in UsageRecord.objects.filter(request_id__in=[uuid.UUID(e.request_id) for e in good]):  # type: ignore[arg-type]
        assert (row.prompt_tokens, row.completion_tokens, row.cost_picos) == (10, 5, 4_500_000)
        assert row.gate == {"rate": {"admitted": True}}
    sanitized = UsageRecord.objects.filter(gate__error="row sanitized")
    assert sanitized.count() == 20
    assert set(sanitized.values_list("usage_source", flat=True)) == {"estimated"}
    assert not any("\x00" in m for m in sanitized.values_list("public_model", flat=True))
    # The estimator was not run on the bad content part: tokens are what the provider did not report, 0.
    first = UsageRecord.objects.get(request_id=uuid.UUID(int=1000))
    assert (first.prompt_tokens, first.completion_tokens, first.public_model) == (0, 0, "mini")
    # Each sanitized row is reported once, by request id, and never with the prompt.
    assert SECRET not in caplog.text and uuid.UUID(int=1000).hex in caplog.text
    assert caplog.text.count(uuid.UUID(int=1000).hex) == 1


def test_building_a_row_never_raises_and_never_touches_the_database(
    alice: Party, mini: Price, django_assert_num_queries: object
) -> None:
    pricing.cached_table()
    with django_assert_num_queries(0):  # type: ignore[operator]
        records = build_records(poisons(alice, 0))
    assert len(records) == 20


def test_only_an_unreachable_database_makes_the_writer_raise(alice: Party, mini: Price) -> None:
    with mock.patch.object(services, "insert_many", side_effect=OperationalError("connection refused")):
        with pytest.raises(OperationalError):
            record_usages(entries=[entry(alice, 1), entry(alice, 2)])
    with mock.patch.object(services, "insert_many", side_effect=ValueError("odd data")):
        records = record_usages(entries=[entry(alice, 3)])  # logged and left out, never raised
    assert len(records) == 1


@pytest.mark.django_db(transaction=True)
def test_writing_the_same_rows_again_bills_each_request_once(alice: Party, mini: Price) -> None:
    entries = [entry(alice, i) for i in range(5)]
    first = record_usages(entries=entries)
    insert_records(first)  # a retry after a lost connection
    again = record_usages(entries=entries + [entry(alice, 9)])  # a journal replayed after a crash
    assert len(again) == 6 and UsageRecord.objects.count() == 6
    assert sum(UsageRecord.objects.values_list("cost_picos", flat=True)) == 6 * 4_500_000


@pytest.mark.django_db(transaction=True)
def test_a_batch_the_database_refuses_is_written_row_by_row_and_a_refused_row_in_minimal_form(
    alice: Party, bob: Party, mini: Price
) -> None:
    records = build_records([entry(alice if i % 3 else bob, i) for i in range(30)])
    records[7].completion_tokens = -1  # changed after the checks: the column's constraint refuses it
    insert_records(records)
    assert UsageRecord.objects.count() == 30
    refused = UsageRecord.objects.get(request_id=records[7].request_id)
    assert (refused.completion_tokens, refused.usage_source, refused.gate["error"]) == (0, "estimated", "row sanitized")
    assert refused.gate["rate"] == {"admitted": True}
