"""The playground (a signed-in member's chat through the /v1 path) and the live usage WebSocket."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import AsyncClient, Client

from accounts.models import ApiKey
from billing import live
from billing.models import UsageRecord
from gateway_site.asgi import application
from proxy import routing
from proxy.services import ensure_demo_route

from ..conftest import Party

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Hello"}], "stream": True}


@pytest.fixture(autouse=True)
def demo(transactional_db: None) -> None:
    ensure_demo_route()
    routing.invalidate()


async def read(response: object) -> str:
    return b"".join([part async for part in response.streaming_content]).decode()  # type: ignore[attr-defined]


def test_the_playground_streams_through_the_v1_path_on_the_members_own_key(alice: Party, bob: Party) -> None:
    page = Client()
    page.force_login(alice.user)
    assert '<option>demo</option>' in page.get("/playground/").content.decode()

    async def chat(party: Party) -> str:
        client = AsyncClient()
        await sync_to_async(client.force_login)(party.user)
        response = await client.post("/playground/chat", json.dumps(CHAT), content_type="application/json")
        assert response.status_code == 200 and response["content-type"].startswith("text/event-stream")
        return await read(response)

    body = async_to_sync(chat)(alice)
    assert "data: [DONE]" in body and "Hello" in body
    async_to_sync(chat)(alice)
    key = ApiKey.objects.get(tenant=alice.tenant, name="Playground: alice")  # one key per member, reused
    rows = UsageRecord.objects.filter(key=key)
    assert rows.count() == 2 and {r.end_reason for r in rows} == {"complete"} and all(r.stream for r in rows)
    async_to_sync(chat)(bob)
    assert UsageRecord.objects.filter(tenant=bob.tenant, key__name="Playground: bob").count() == 1
    assert UsageRecord.objects.filter(tenant=alice.tenant).count() == 2  # bob's chat is bob's


def test_the_playground_needs_a_signed_in_member_and_post(alice: Party) -> None:
    async def call(signed_in: bool, method: str) -> object:
        client = AsyncClient()
        if signed_in:
            await sync_to_async(client.force_login)(alice.user)
        if method == "get":
            return await client.get("/playground/chat")
        return await client.post("/playground/chat", json.dumps(CHAT), content_type="application/json")

    anonymous = async_to_sync(call)(False, "post")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "invalid_request_error"
    assert async_to_sync(call)(True, "get").status_code == 405
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(alice.user)
    assert csrf.post("/playground/chat", json.dumps(CHAT), content_type="application/json").status_code == 403


def session_cookie(party: Party) -> bytes:
    client = Client()
    client.force_login(party.user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


def socket(cookie: bytes | None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://localhost")] + ([(b"cookie", cookie)] if cookie else [])
    return WebsocketCommunicator(application, "/ws/live/", headers=headers)


def test_the_live_feed_sends_each_tenant_only_its_own_rows(alice: Party, bob: Party) -> None:
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)

    async def scenario() -> tuple[dict, dict, bool]:
        alices, bobs, anonymous = socket(alice_cookie), socket(bob_cookie), socket(None)
        assert (await alices.connect())[0] and (await bobs.connect())[0]
        connected, code = await anonymous.connect()
        assert not connected and code == 4403
        client = AsyncClient()
        response = await client.post("/v1/chat/completions", json.dumps({**CHAT, "stream": False}),
                                     content_type="application/json", headers=alice.auth)
        assert response.status_code == 200
        seen = await alices.receive_json_from(timeout=5)
        silent = await bobs.receive_nothing(timeout=0.5)
        await alices.disconnect()
        await bobs.disconnect()
        return seen, response.headers, silent

    seen, headers, silent = async_to_sync(scenario)()
    [row] = seen["rows"]
    assert row["request_id"].replace("-", "") == headers["x-request-id"] and row["key_id"] == alice.key.pk
    assert row["model"] == "demo" and row["end_reason"] == "complete" and "Hello" not in json.dumps(row)
    assert silent  # bob's socket heard nothing of alice's request


def test_a_socket_from_another_site_is_refused(alice: Party) -> None:
    cookie = session_cookie(alice)

    async def scenario() -> bool:
        communicator = WebsocketCommunicator(application, "/ws/live/",
                                             headers=[(b"origin", b"https://evil.example"), (b"cookie", cookie)])
        connected, _ = await communicator.connect()
        return connected

    assert async_to_sync(scenario)() is False


def test_rows_go_only_to_tenants_with_a_live_page_open(alice: Party, bob: Party) -> None:
    from unittest import mock

    rows = [mock.Mock(tenant_id=alice.tenant.pk), mock.Mock(tenant_id=bob.tenant.pk)]
    sent: list[str] = []

    class Layer:
        async def group_send(self, group: str, message: dict) -> None:
            sent.append(group)

    async def scenario() -> None:
        with mock.patch.object(live, "get_channel_layer", return_value=Layer()), \
                mock.patch.object(live, "event", side_effect=lambda r: {}):
            await live.publish(rows)  # nobody watches: nothing is sent
            await live.listen(bob.tenant.pk)
            await live.publish(rows)

    asyncio.run(scenario())
    assert sent == [live.group(bob.tenant.pk)]
