"""Calling POST /v1/responses in process, whole or streamed, and reading back what it left: the row, the stored answer."""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from billing.models import UsageRecord

from ..conftest import Party

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def create(client: Client, party: Party, **fields: Any) -> Any:
    return client.post("/v1/responses", json.dumps(fields), content_type="application/json", headers=party.auth)


def answer(client: Client, party: Party, **fields: Any) -> Response:
    """A whole answer, checked to be a Response the openai SDK accepts."""
    response = create(client, party, **fields)
    assert response.status_code == 200, response.content
    return Response.model_validate(response.json())


def stream(party: Party, **fields: Any) -> tuple[Any, list[Any]]:
    """A streamed answer and its events, each validated as the SDK's event type."""
    async def request() -> tuple[Any, bytes]:
        response = await AsyncClient().post("/v1/responses", json.dumps({**fields, "stream": True}),
                                            content_type="application/json", headers=party.auth)
        return response, b"".join([part async for part in response.streaming_content])

    response, content = async_to_sync(request)()
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream", content[:300]
    events = []
    for block in content.decode().split("\n\n"):
        lines = block.splitlines()
        if not lines:
            continue
        name, data = lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))
        event = EVENTS.validate_python(data)
        assert event.type == name
        events.append(event)
    assert [event.sequence_number for event in events] == sorted(event.sequence_number for event in events)
    return response, events


def row_of(response: Any) -> UsageRecord:
    [row] = UsageRecord.objects.filter(request_id=response["x-request-id"])
    return row
