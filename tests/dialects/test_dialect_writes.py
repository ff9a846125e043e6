"""A Responses stream has more events than the chat stream it comes from: the events one upstream chunk makes reach the
client in one write, so the stream costs as many writes as the chat stream does."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync

from proxy.services import ensure_demo_route

from ..conftest import Party
from .dialect_checks import RESPONSES, URLS, assert_complete_stream, body_for, exchange

pytestmark = pytest.mark.django_db


def test_a_responses_stream_takes_no_more_writes_than_its_chat_stream(alice: Party, settings: object) -> None:
    ensure_demo_route()
    asked = body_for(RESPONSES, "demo", stream=True)  # the demo model's answer echoes the question: the same one
    chat = async_to_sync(exchange)("/v1/chat/completions", json.dumps(
        {"model": "demo", "stream": True, "messages": [{"role": "user", "content": asked["input"]}],
         "max_tokens": asked["max_output_tokens"]}).encode(), alice.auth)
    responses = async_to_sync(exchange)(URLS[RESPONSES], json.dumps(asked).encode(), alice.auth)
    events = assert_complete_stream(RESPONSES, responses.content)
    chat_frames = chat.content.count(b"\n\n")
    assert len(events) > chat_frames  # the protocol's own events: created, in_progress, item and part opened/closed ...
    assert responses.writes <= chat.writes, (responses.writes, chat.writes)
    # Every event arrives whole and in order, numbered without a gap.
    numbers = [data["sequence_number"] for _, data in events]
    assert numbers == list(range(len(numbers)))
    assert events[0][0] == "response.created" and events[-1][0] == "response.completed"
