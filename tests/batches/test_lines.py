"""One batch line: its caller, its share of the limits, its discount, its journal lines and its recovered row."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from accounts.keys import KeyRejected, Limits, caller_by_id
from accounts.models import ApiKey, Tenant
from batches import lines, runner
from billing import journal, recovery
from billing.models import Price, UsageRecord
from billing.services import discounted
from proxy.services import ensure_demo_route

from ..conftest import Party
from .running import line, running_batch


def test_a_batch_takes_its_share_of_each_limit_at_least_one() -> None:
    limits = Limits(requests_per_minute=9, tokens_per_minute=None, max_concurrent=1)
    assert lines.share(limits, 50) == Limits(requests_per_minute=4, tokens_per_minute=None, max_concurrent=1)
    assert lines.share(limits, 100) == limits
    assert not lines.share(Limits(), 50)  # no limit stays no limit


def test_the_caller_by_key_id_is_refused_as_a_presented_key_would_be(alice: Party, bob: Party) -> None:
    caller = caller_by_id(alice.key.pk)
    assert (caller.key_id, caller.tenant_id, caller.key_prefix) == (alice.key.pk, alice.tenant.pk, alice.key.prefix)
    ApiKey.objects.filter(pk=bob.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    Tenant.objects.filter(pk=alice.tenant.pk).update(is_active=False)
    with pytest.raises(KeyRejected) as expired:
        caller_by_id(bob.key.pk)
    with pytest.raises(KeyRejected) as inactive:
        caller_by_id(alice.key.pk)
    ApiKey.objects.filter(pk=alice.key.pk).update(revoked_at=timezone.now())
    with pytest.raises(KeyRejected) as revoked:
        caller_by_id(alice.key.pk)
    with pytest.raises(KeyRejected) as unknown:
        caller_by_id(10**9)
    assert [e.value.reason for e in (expired, inactive, revoked, unknown)] == ["expired", "tenant_inactive", "revoked",
                                                                              "unknown"]


@pytest.mark.parametrize(("cost", "percent", "expected"), [
    (100, "0", 100), (100, "100", 0), (3, "50", 2), (1, "50", 1), (1, "50.01", 0), (10**12, "33.33", 666_700_000_000),
    (999, "12.5", 874),  # 874.125 -> 874
])
def test_the_discount_is_whole_picos_rounded_half_up(cost: int, percent: str, expected: int) -> None:
    assert discounted(cost, Decimal(percent)) == expected


def test_a_streaming_line_is_refused_with_the_v1_envelope(alice: Party, files_dir: Any) -> None:
    ensure_demo_route()
    context = lines.LineContext("batch_x", "chat", lines.batch_caller(caller_by_id(alice.key.pk)))
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    outcome = async_to_sync(lines.run_line)(context, "a", body)
    assert outcome is not None and outcome.status == 400
    assert outcome.body["error"]["param"] == "stream"
    row = UsageRecord.objects.get(request_id=outcome.request_id)
    assert (row.batch_id, row.custom_id, row.status_code) == ("batch_x", "a", 400)


def test_an_invalid_body_fails_as_v1_would_say(alice: Party) -> None:
    ensure_demo_route()
    context = lines.LineContext("batch_x", "chat", caller_by_id(alice.key.pk))
    outcome = async_to_sync(lines.run_line)(context, "a", {"model": "demo", "messages": "nope"})
    assert outcome is not None and outcome.status == 400 and outcome.body["error"]["param"] == "messages"


def test_the_output_and_unrun_lines_have_openais_shape() -> None:
    done = json.loads(lines.output_line("c1", lines.Outcome(200, {"object": "chat.completion"}, "abc")))
    assert done["id"].startswith("batch_req_") and len(done["id"]) == len("batch_req_") + 24
    assert done == {"id": done["id"], "custom_id": "c1", "error": None,
                    "response": {"status_code": 200, "request_id": "abc", "body": {"object": "chat.completion"}}}
    unrun = json.loads(lines.unrun_line("c2", "batch_cancelled"))
    assert unrun["response"] is None and unrun["error"]["code"] == "batch_cancelled" and unrun["error"]["message"]


def test_a_lines_journal_begin_names_its_batch_and_custom_id(alice: Party, files_dir: Any) -> None:
    ensure_demo_route()
    batch = running_batch(alice, [line("j1", model="demo")])
    runner.send_parts(batch)
    (row,) = UsageRecord.objects.filter(batch_id=batch.public_id)
    begun = journal.read(journal.journal().path)[row.request_id.hex].begin
    assert begun is not None and (begun["batch_id"], begun["custom_id"]) == (batch.public_id, "j1")


def test_a_dead_workers_line_is_recovered_once_with_its_batch_fields_and_discount(alice: Party, tmp_path: Path) -> None:
    price = Price.objects.create(model="m", input_per_million=Decimal("1000"), output_per_million=Decimal("3000"),
                                 batch_discount_percent=Decimal("50"))
    begin = {"t": "b", "tenant_id": alice.tenant.pk, "key_id": alice.key.pk, "endpoint": "chat", "public_model": "m",
             "provider": "p", "upstream_model": "m", "stream": False, "chat": True, "at": timezone.now().timestamp(),
             "gate": {}, "prompt_tokens": 11, "batch_id": "batch_dead", "custom_id": "line-7"}
    dead = tmp_path / "host-999-dead-000001.journal"
    # The same line begun twice (say, by two processes' journals replayed together): still one row.
    dead.write_text(json.dumps({**begin, "id": "a" * 32}) + "\n" + json.dumps({**begin, "id": "b" * 32}) + "\n")
    requests, owed, written = recovery.replay_rows(dead)
    rows = list(UsageRecord.objects.filter(batch_id="batch_dead"))
    assert len(rows) == 1 and rows[0].custom_id == "line-7" and rows[0].end_reason == "gateway_lost"
    full = price.cost_picos(prompt_tokens=rows[0].prompt_tokens, completion_tokens=rows[0].completion_tokens)
    assert rows[0].cost_picos == discounted(full, Decimal("50")) > 0
    recovery.replay_rows(dead)  # replayed again: nothing more
    assert UsageRecord.objects.filter(batch_id="batch_dead").count() == 1


def test_a_routes_discount_noted_in_the_gate_prices_a_recovered_row_alike(alice: Party, tmp_path: Path) -> None:
    Price.objects.create(model="m", input_per_million=Decimal("1000"), output_per_million=Decimal("3000"),
                         batch_discount_percent=Decimal("50"))
    begin = {"t": "b", "id": "c" * 32, "tenant_id": alice.tenant.pk, "key_id": alice.key.pk, "endpoint": "chat",
             "public_model": "m", "provider": "p", "upstream_model": "m", "at": timezone.now().timestamp(),
             "gate": {"batch_discount_percent": "10"}, "prompt_tokens": 1000, "batch_id": "batch_r", "custom_id": "x"}
    dead = tmp_path / "host-998-dead-000001.journal"
    dead.write_text(json.dumps(begin) + "\n")
    recovery.replay_rows(dead)
    row = UsageRecord.objects.get(batch_id="batch_r")
    assert row.cost_picos == discounted(row.price.cost_picos(prompt_tokens=row.prompt_tokens,
                                                             completion_tokens=row.completion_tokens), Decimal("10"))


def test_an_outage_at_the_gate_waits_and_asks_again_then_gives_its_503(alice: Party,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.errors import ServiceUnavailable

    ensure_demo_route()
    real, calls = lines.check_limits, []

    async def down_once(meter: Any, targets: Any) -> None:
        calls.append(meter.request_id)
        if len(calls) == 1:
            raise ServiceUnavailable("Redis is down")
        await real(meter, targets)

    monkeypatch.setattr(lines, "check_limits", down_once)
    context = lines.LineContext("batch_o", "chat", caller_by_id(alice.key.pk))
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    outcome = async_to_sync(lines.run_line)(context, "a", body)
    assert outcome is not None and outcome.status == 200 and len(set(calls)) == 2  # a new request id for the retry
    assert list(UsageRecord.objects.filter(batch_id="batch_o").values_list("status_code", flat=True)) == [200]

    async def down(meter: Any, targets: Any) -> None:
        raise ServiceUnavailable("Redis is down")

    monkeypatch.setattr(lines, "OUTAGE_SECONDS", 0)  # an outage longer than a line waits for
    monkeypatch.setattr(lines, "check_limits", down)
    outcome = async_to_sync(lines.run_line)(context, "b", body)
    assert outcome is not None and outcome.status == 503
    assert outcome.body["error"]["code"] == "service_unavailable"
