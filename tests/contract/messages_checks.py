"""What an Anthropic Messages stream must look like to the official SDK, checked event by event."""

from __future__ import annotations

from typing import Any

from anthropic import Anthropic

from ..conftest import Party
from .conftest import RED_PIXEL_PNG, WEATHER_SCHEMA

WEATHER_TOOL = {"name": "get_weather", "description": "The weather in a city now.", "input_schema": WEATHER_SCHEMA}
PICTURE = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": RED_PIXEL_PNG}},
           {"type": "text", "text": "Please describe the picture."}]


def anthropic_sdk(url: str, party: Party) -> Anthropic:
    # ANTHROPIC_BASE_URL=<tollgate> with a Tollgate key: the SDK sends it as x-api-key.
    return Anthropic(base_url=url, api_key=party.secret, max_retries=0)


def check_events(events: list[Any], model: str) -> dict[str, Any]:
    """The events of one message in order; returns what they add up to (blocks, stop reason, usage)."""
    events = [e for e in events if e.type != "ping"]
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"], types
    start = events[0].message
    assert start.id.startswith("msg_") and start.role == "assistant" and start.model == model and start.content == []
    blocks: list[dict[str, Any]] = []
    open_index = None
    for event in events[1:-2]:
        if event.type == "content_block_start":
            assert open_index is None and event.index == len(blocks), types
            open_index = event.index
            block = event.content_block
            blocks.append({"type": block.type, "text": "", "json": "", **(
                {"id": block.id, "name": block.name} if block.type == "tool_use" else {})})
        elif event.type == "content_block_delta":
            assert event.index == open_index
            if event.delta.type == "text_delta":
                blocks[event.index]["text"] += event.delta.text
            else:
                assert event.delta.type == "input_json_delta"
                blocks[event.index]["json"] += event.delta.partial_json
        else:
            assert event.type == "content_block_stop" and event.index == open_index, types
            open_index = None
    assert open_index is None and blocks
    for event in events:  # the SDK builds its objects without validating them: check against its own types
        type(event).model_validate(event.to_dict(warnings=False))
    delta = events[-2]
    # message_delta's counts are cumulative and win over message_start's, as in the SDK's own accumulator; a
    # translated stream learns the prompt's count only at the end.
    prompt = delta.usage.input_tokens if delta.usage.input_tokens is not None else start.usage.input_tokens
    return {"blocks": blocks, "stop_reason": delta.delta.stop_reason, "usage": (prompt, delta.usage.output_tokens)}


def tool_use(message: Any) -> Any:
    """The message's one tool_use block, checked: get_weather for Paris."""
    uses = [block for block in message.content if block.type == "tool_use"]
    assert len(uses) == 1, message.content
    assert uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"} and uses[0].id
    assert message.stop_reason == "tool_use"
    return uses[0]


def usage_pair(message: Any) -> tuple[int, int]:
    type(message).model_validate(message.to_dict(warnings=False))  # a missing required field fails here
    return message.usage.input_tokens, message.usage.output_tokens
