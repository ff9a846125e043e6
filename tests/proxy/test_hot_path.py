"""Query budgets and the one-row-per-request rule on the /v1 path, in process with the built-in demo model."""

from __future__ import annotations

import asyncio
import json

from asgiref.sync import async_to_sync, sync_to_async
from django.core.cache import caches
from django.test import TestCase
from django.utils import timezone

from accounts import keys
from accounts.keys import lookup
from accounts.models import ApiKey
from billing.models import UsageRecord
from proxy import routing
from proxy.metering import Meter
from proxy.services import ensure_demo_route

from ..conftest import make_party

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Hello there"}]}


async def drain(response: object) -> bytes:
    return b"".join([part async for part in response.streaming_content])  # type: ignore[attr-defined]


class HotPathTests(TestCase):
    def setUp(self) -> None:
        ensure_demo_route()
        routing.invalidate()
        self.alice = make_party("alice")
        ApiKey.objects.filter(pk=self.alice.key.pk).update(last_used_at=timezone.now())

    async def post(self, body: dict[str, object]) -> object:
        return await self.async_client.post(
            "/v1/chat/completions", json.dumps(body), content_type="application/json", headers=self.alice.auth
        )

    def post_sync(self, body: dict[str, object]) -> object:
        # The sync test client runs the async view in a loop of its own; the ORM work it hands back to
        # this thread is what assertNumQueries counts.
        return self.client.post(
            "/v1/chat/completions", json.dumps(body), content_type="application/json", headers=self.alice.auth
        )

    def test_non_streaming_query_budget(self) -> None:
        self.post_sync(CHAT)  # warms the key cache and this process's routing table
        # warm key cache: the usage insert only
        with self.assertNumQueries(1):
            response = self.post_sync(CHAT)
        self.assertEqual(response.status_code, 200)
        caches["default"].clear()
        keys._local.clear()
        # cold key cache: key lookup (joined with its tenant) + usage insert
        with self.assertNumQueries(2):
            self.post_sync(CHAT)

    def test_the_tenants_model_allow_list_costs_no_query(self) -> None:
        from accounts.models import Tenant

        Tenant.objects.filter(pk=self.alice.tenant.pk).update(allowed_models=["demo"])
        self.post_sync(CHAT)
        # warm key cache: the tenant's list came with the cached key; the usage insert only
        with self.assertNumQueries(1):
            self.assertEqual(self.post_sync(CHAT).status_code, 200)
        Tenant.objects.filter(pk=self.alice.tenant.pk).update(allowed_models=["something-else"])
        caches["default"].clear()
        keys._local.clear()
        # cold key cache: key lookup (joined with its tenant, which carries the list) + the refused request's row
        with self.assertNumQueries(2):
            self.assertEqual(self.post_sync(CHAT).status_code, 403)

    def test_streaming_query_budget(self) -> None:
        self.post_sync(CHAT)
        # warm key cache: the usage insert only, written when the stream ends
        with self.assertNumQueries(1):
            response = self.post_sync({**CHAT, "stream": True})
            body = async_to_sync(drain)(response)
        self.assertTrue(body.endswith(b"data: [DONE]\n\n"))
        self.assertNotIn(b'"choices":[]', body)  # usage chunk stripped: the client did not ask

    async def test_every_request_leaves_exactly_one_row(self) -> None:
        await self.post(CHAT)
        streamed = await self.post({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
        body = await drain(streamed)
        self.assertIn(b'"choices":[]', body)
        await self.post({"model": "no-such-model", "messages": CHAT["messages"]})
        await self.post({"model": "demo"})
        reasons = await sync_to_async(lambda: sorted(UsageRecord.objects.values_list("end_reason", "status_code")))()
        self.assertEqual(reasons, [("complete", 200), ("complete", 200), ("rejected", 400), ("rejected", 404)])
        row = await UsageRecord.objects.filter(stream=True).aget()
        self.assertEqual((row.usage_source, row.completion_tokens > 0, row.public_model), ("provider", True, "demo"))
        self.assertEqual(streamed["x-request-id"], row.request_id.hex)

    async def test_the_row_is_written_even_if_recording_is_cancelled_twice(self) -> None:
        meter = Meter("chat")
        meter.caller = await sync_to_async(lookup)(self.alice.secret)
        recording = asyncio.ensure_future(meter.record(end_reason="client_gone", status=499))
        await asyncio.sleep(0)
        recording.cancel()  # the request task is cancelled while the row is being written...
        await asyncio.sleep(0)
        recording.cancel()  # ...and again, as daphne does after its application-close timeout
        with self.assertRaises(asyncio.CancelledError):
            await recording
        for _ in range(200):
            if await UsageRecord.objects.filter(end_reason="client_gone").aexists():
                break
            await asyncio.sleep(0.01)
        self.assertEqual(await UsageRecord.objects.filter(tenant_id=self.alice.tenant.pk).acount(), 1)

    async def test_a_stream_the_client_left_before_it_started_still_leaves_its_row(self) -> None:
        from proxy.streaming import guarded_relay

        closed = []

        class Upstream:
            def __aiter__(self) -> object:
                raise AssertionError("never iterated")

            async def aclose(self) -> None:
                closed.append(True)

        meter = Meter("chat")
        meter.caller = await sync_to_async(lookup)(self.alice.secret)

        async def view_then_disconnect() -> None:
            guarded_relay(Upstream(), None, meter)  # type: ignore[arg-type]
            raise asyncio.CancelledError  # the request task dies before the response body is sent

        with self.assertRaises(asyncio.CancelledError):
            await asyncio.ensure_future(view_then_disconnect())
        for _ in range(200):
            if await UsageRecord.objects.filter(end_reason="client_gone").aexists():
                break
            await asyncio.sleep(0.01)
        self.assertEqual(closed, [True])
        self.assertEqual(await UsageRecord.objects.filter(end_reason="client_gone", status_code=499).acount(), 1)

    async def test_a_lost_database_spools_the_row_and_writes_it_when_the_database_is_back(self) -> None:
        from unittest import mock

        from django.db import OperationalError

        from billing import journal, ledger

        meter = Meter("chat")
        meter.caller = await sync_to_async(lookup)(self.alice.secret)
        real_insert = ledger.insert_records

        def database_down(records: object) -> None:
            raise OperationalError("server closed the connection unexpectedly")

        with mock.patch("billing.ledger.insert_records", database_down), \
                self.assertLogs("billing.ledger", "ERROR") as logs:
            await meter.record(end_reason="complete", status=200)  # answered at once, not held up by the outage
        self.assertIn("database unavailable", logs.output[0])
        self.assertFalse(await UsageRecord.objects.filter(request_id=meter.request_id).aexists())
        self.assertEqual(ledger.spooled(), 1)
        self.assertIn(meter.request_id, journal.read(journal.journal().path))  # and it is in the journal
        self.assertEqual(ledger.insert_records, real_insert)
        self.assertEqual(await sync_to_async(ledger.write_spooled)(), 0)  # the upkeep's retry, database back
        self.assertTrue(await UsageRecord.objects.filter(request_id=meter.request_id).aexists())
        self.assertFalse(ledger.is_down())

    def test_rows_of_concurrent_requests_share_one_insert(self) -> None:
        caller = lookup(self.alice.secret)
        meters = [Meter("chat") for _ in range(10)]
        for meter in meters:
            meter.caller = caller

        async def ten_requests_end_together() -> None:
            await asyncio.gather(*(meter.record(end_reason="complete", status=200) for meter in meters))

        with self.assertNumQueries(1):
            async_to_sync(ten_requests_end_together)()
        ids = {r.hex for r in UsageRecord.objects.values_list("request_id", flat=True)}
        self.assertEqual(ids, {meter.request_id for meter in meters})
