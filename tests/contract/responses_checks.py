"""What a Responses API stream must look like to the official SDK, checked event by event."""

from __future__ import annotations

import json
from typing import Any, get_args

from openai import OpenAI
from openai.types.responses import Response, ResponseStreamEvent

from ..conftest import Party

WEATHER_FUNCTION = {"type": "function", "name": "get_weather", "description": "The weather in a city now.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                                   "additionalProperties": False},
                    "strict": True}


# Every stream event class the SDK knows, by its `type`.
EVENT_CLASSES = {get_args(cls.model_fields["type"].annotation)[0]: cls
                 for cls in get_args(get_args(ResponseStreamEvent)[0])}


def strict(*objects: Any) -> None:
    """Validate what the SDK parsed against its own types. The SDK builds its objects without validating, so a
    missing required field would otherwise surface only in a client that reads it (or in a typed language)."""
    for item in objects:
        type(item).model_validate(item.to_dict(warnings=False))


def event_of(data: dict[str, Any]) -> Any:
    """A stream event as received by another client (the Node SDK), validated against the Python SDK's type."""
    return EVENT_CLASSES[data["type"]].model_validate(data)


def openai_sdk(url: str, party: Party) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=party.secret, max_retries=0)


def check_stream(events: list[Any], status: str = "completed") -> Response:
    """The semantic events of one response in order; returns the response of the last one, ``response.<status>``."""
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"], types
    assert types[-1] == f"response.{status}", types
    assert sum(t in ("response.completed", "response.incomplete", "response.failed") for t in types) == 1, types
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(len(events))), numbers
    created = events[0].response
    assert created.status == "in_progress" and created.id.startswith("resp_")
    final: Response = events[-1].response
    assert final.id == created.id and final.status == status and final.usage is not None
    assert {event.response.id for event in events if hasattr(event, "response")} == {final.id}

    added = {e.output_index: e.item for e in events if e.type == "response.output_item.added"}
    done = {e.output_index: e.item for e in events if e.type == "response.output_item.done"}
    assert sorted(added) == sorted(done) == list(range(len(final.output)))
    for index, item in enumerate(final.output):
        assert added[index].id == done[index].id == item.id and added[index].type == item.type
        assert done[index].status == "completed"
        if item.type == "message":
            deltas = "".join(e.delta for e in events
                             if e.type == "response.output_text.delta" and e.output_index == index)
            texts = [e.text for e in events if e.type == "response.output_text.done" and e.output_index == index]
            assert texts == [deltas] == [item.content[0].text]
            parts = [e for e in events if e.type == "response.content_part.added" and e.output_index == index]
            assert len(parts) == 1 and parts[0].item_id == item.id
            assert all(e.item_id == item.id for e in events if e.type == "response.output_text.delta"
                       and e.output_index == index)
        elif item.type == "function_call":
            deltas = "".join(e.delta for e in events
                             if e.type == "response.function_call_arguments.delta" and e.output_index == index)
            finished = [e.arguments for e in events
                        if e.type == "response.function_call_arguments.done" and e.output_index == index]
            assert finished == [deltas] == [item.arguments]
    for event in events:  # the SDK's own event types (its stream helper's subclasses add parsed fields of their own)
        event_of(event.to_dict(warnings=False))
    return final


def function_call(response: Response) -> Any:
    """The response's one function call item, checked: get_weather for Paris, with a call id."""
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1, response.output
    call = calls[0]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id and call.status == "completed"
    return call


def usage_pair(response: Response) -> tuple[int, int]:
    strict(response)
    usage = response.usage
    assert usage is not None and usage.total_tokens == usage.input_tokens + usage.output_tokens
    return usage.input_tokens, usage.output_tokens
