"""Stored responses as the gateway leaves them, for the tests of reading, cancelling and continuing them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from proxy import responses_store
from proxy.models import StoredResponse

from ..conftest import Party


def response_body(response_id: str, status: str = "completed", text: str = "Hello.", **fields: Any) -> dict[str, Any]:
    """A Response object as the Responses API returns it (the fields the SDK requires, and an answer)."""
    output = [{"id": f"msg_{response_id[5:]}", "type": "message", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}] if status == "completed" else []
    return {"id": response_id, "object": "response", "created_at": 1_700_000_000, "status": status, "model": "demo",
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "error": None,
            "incomplete_details": None, "usage": None, **fields}


def store(party: Party, *, status: str = "completed", background: bool = False, previous: str = "",
          items: list[dict[str, Any]] | None = None, text: str = "Hello.", expires_in: timedelta = timedelta(days=30),
          response_id: str | None = None) -> StoredResponse:
    response_id = response_id or responses_store.new_id()
    now = timezone.now()
    return StoredResponse.objects.create(
        id=response_id, tenant=party.tenant, key=party.key, model="demo", status=status, background=background,
        previous_response_id=previous, request={"model": "demo", "input": "hi"},
        input_items=items if items is not None else [{"role": "user", "content": f"Question before '{text}'"}],
        response=response_body(response_id, status, text, background=background), created_at=now,
        updated_at=now, expires_at=now + expires_in,
    )
