from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import GatewayError, ProviderError
from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.base import ApiRequest, Chunk, JSONDict, Target, UpstreamReply, UpstreamRequest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TARGET = Target(
    public_model="claude", deployment_id=1, provider_name="anthropic", kind="anthropic",
    base_url="https://api.anthropic.com", upstream_model="claude-sonnet-4-5", api_key="sk-ant-test",
)
SECRET_UPSTREAM_MESSAGE = "prompt said: my password is hunter2"


def chat(data: JSONDict, *, stream: bool = True, endpoint: str = "chat") -> ApiRequest:
    return ApiRequest(endpoint=endpoint, model="claude", data=data, stream=stream)


def build(data: JSONDict, **kwargs: Any) -> tuple[UpstreamRequest, JSONDict]:
    request = AnthropicProvider().build_request(TARGET, chat(data, **kwargs))
    return request, request.json()


def replay(name: str) -> list[Chunk]:
    translate = AnthropicProvider().stream_translator(TARGET, chat({"messages": []}))
    chunks: list[Chunk] = []
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("data: "):
            chunks.extend(translate(line.removeprefix("data: ")))
    return chunks


def test_request_goes_to_messages_with_anthropic_headers() -> None:
    target = dataclasses.replace(TARGET, base_url="https://api.anthropic.com/")
    body = chat({"messages": [{"role": "user", "content": "hi"}]})
    request = AnthropicProvider().build_request(target, body)
    assert request.method == "POST"
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert headers["x-api-key"] == "sk-ant-test" and headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json" and "authorization" not in headers


def test_request_translates_a_simple_chat() -> None:
    _, payload = build({"messages": [{"role": "user", "content": "hi"}]}, stream=False)
    assert payload == {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 4096,
        "stream": False,
    }


def test_system_and_developer_messages_become_the_system_prompt() -> None:
    _, payload = build({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
    ]})
    assert payload["system"] == "Be brief.\n\nAnswer in French."
    assert [m["role"] for m in payload["messages"]] == ["user"]


def test_consecutive_messages_of_one_role_are_merged() -> None:
    _, payload = build({"messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "three"}]},
        {"role": "assistant", "content": "four"},
        {"role": "system", "content": "ignored for alternation"},
        {"role": "assistant", "content": "five"},
        {"role": "user", "content": "six"},
    ]})
    assert payload["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": t} for t in ("one", "two", "three")]},
        {"role": "assistant", "content": [{"type": "text", "text": t} for t in ("four", "five")]},
        {"role": "user", "content": [{"type": "text", "text": "six"}]},
    ]


@pytest.mark.parametrize(("stop", "expected"), [("END", ["END"]), (["a", "b"], ["a", "b"])])
def test_stop_becomes_stop_sequences(stop: str | list[str], expected: list[str]) -> None:
    _, payload = build({"messages": [{"role": "user", "content": "hi"}], "stop": stop})
    assert payload["stop_sequences"] == expected
    assert "stop" not in payload


def test_sampling_and_token_limits_are_forwarded() -> None:
    data = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "top_p": 0.9, "max_tokens": 50}
    _, payload = build(data)
    assert (payload["temperature"], payload["top_p"], payload["max_tokens"], payload["stream"]) == (0.2, 0.9, 50, True)
    _, payload = build({**data, "max_completion_tokens": 70})
    assert payload["max_tokens"] == 70


def test_other_endpoints_are_unsupported() -> None:
    with pytest.raises(GatewayError) as caught:
        build({"input": "hi"}, endpoint="embeddings")
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "unsupported_endpoint", None)
    assert "not supported for this model's provider" in caught.value.message


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]}]},
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"messages": [{"role": "user", "content": "hi"},
                       {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1"}]}]},
         "messages[1].tool_calls[0]"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]},
         "messages[1].tool_call_id"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "critic", "content": "42"}]}, "messages[1].role"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"messages": []}, "messages"),
    ],
)
def test_unsupported_content_is_rejected_naming_the_param(data: JSONDict, param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        build(data)
    assert (caught.value.status, caught.value.param) == (400, param)
    assert not isinstance(caught.value, ProviderError)


def test_replayed_stream_yields_openai_chunks() -> None:
    chunks = replay("anthropic_stream_hello.txt")
    for chunk in chunks:
        assert chunk.data is not None
        obj = json.loads(chunk.data)
        assert obj["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL"
        assert obj["object"] == "chat.completion.chunk"
        assert obj["model"] == "claude"
        assert isinstance(obj["created"], int) and isinstance(obj["choices"], list)
        assert b": " not in chunk.data  # compact encoding
    first = json.loads(chunks[0].data or b"")
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    assert "".join(c.text for c in chunks) == "Hello! How can I help you today?"
    deltas = [json.loads(c.data or b"")["choices"][0]["delta"].get("content", "") for c in chunks[:-1]]
    assert "".join(deltas) == "Hello! How can I help you today?"


def test_replayed_stream_ends_with_finish_then_usage() -> None:
    *_, finish, usage = replay("anthropic_stream_hello.txt")
    assert finish.finished and not finish.usage_only
    assert json.loads(finish.data or b"")["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage.usage_only and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens, usage.usage.cached_tokens) == (2060, 12, 2048)
    obj = json.loads(usage.data or b"")
    assert obj["choices"] == []
    assert obj["usage"] == {
        "prompt_tokens": 2060, "completion_tokens": 12, "total_tokens": 2072,
        "prompt_tokens_details": {"cached_tokens": 2048},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    translate = AnthropicProvider().stream_translator(TARGET, chat({}))
    translate('{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":5,"output_tokens":1}}}')
    event = {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": 3}}
    finish, usage = translate(json.dumps(event))
    assert json.loads(finish.data or b"")["choices"][0]["finish_reason"] == finish_reason
    assert usage.usage is not None and (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (5, 3)


def test_cumulative_input_counts_in_message_delta_are_used() -> None:
    translate = AnthropicProvider().stream_translator(TARGET, chat({}))
    translate('{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":5,"output_tokens":1}}}')
    usage_in_delta = {"input_tokens": 7, "cache_creation_input_tokens": 100, "cache_read_input_tokens": None,
                      "output_tokens": 9}
    _, usage = translate(json.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                     "usage": usage_in_delta}))
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens, usage.usage.cached_tokens) == (107, 9, 0)


@pytest.mark.parametrize(
    "payload",
    ['{"type":"ping"}', '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
     '{"type":"content_block_stop","index":0}', '{"type":"message_stop"}',
     '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}'],
)
def test_bookkeeping_events_yield_nothing(payload: str) -> None:
    assert AnthropicProvider().stream_translator(TARGET, chat({}))(payload) == []


@pytest.mark.parametrize(
    "payload",
    [json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": SECRET_UPSTREAM_MESSAGE}}),
     "not json " + SECRET_UPSTREAM_MESSAGE],
)
def test_error_event_raises_without_the_upstream_message(payload: str) -> None:
    translate = AnthropicProvider().stream_translator(TARGET, chat({}))
    translate('{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":5}}}')
    with pytest.raises(ProviderError) as caught:
        translate(payload)
    error = caught.value
    assert (error.status, error.code, error.permanent) == (502, "upstream_error", False)
    assert error.message == "The provider failed mid-stream."
    assert "hunter2" not in json.dumps(error.envelope())


def test_parse_response_returns_an_openai_completion() -> None:
    data = {
        "id": "msg_01EcyWo6m4hyW8KHs2y2pei5",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "thinking", "thinking": "...", "signature": "sig"},
                    {"type": "text", "text": "Hi! "}, {"type": "text", "text": "What can I do for you?"}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 40,
                  "output_tokens": 10, "service_tier": "standard"},
    }
    completion = AnthropicProvider().parse_response(TARGET, chat({}, stream=False), data)
    assert completion.text == "Hi! What can I do for you?"
    usage = completion.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (90, 10, 40)
    payload = completion.payload
    assert payload["id"] == "msg_01EcyWo6m4hyW8KHs2y2pei5"
    assert (payload["object"], payload["model"]) == ("chat.completion", "claude")
    assert isinstance(payload["created"], int)
    message = {"role": "assistant", "content": "Hi! What can I do for you?"}
    assert payload["choices"] == [{"index": 0, "message": message, "finish_reason": "length"}]
    assert payload["usage"] == {
        "prompt_tokens": 90, "completion_tokens": 10, "total_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 40},
    }


@pytest.mark.parametrize(
    ("status", "error_type", "expected_status", "permanent"),
    [
        (400, "invalid_request_error", 400, True),
        (401, "authentication_error", 502, False),
        (429, "rate_limit_error", 429, False),
        (529, "overloaded_error", 502, False),
    ],
)
def test_error_for_maps_statuses_without_the_upstream_message(
    status: int, error_type: str, expected_status: int, permanent: bool
) -> None:
    body = {"type": "error", "error": {"type": error_type, "message": SECRET_UPSTREAM_MESSAGE}}
    response = UpstreamReply(status_code=status, headers={}, content=json.dumps(body).encode())
    error = AnthropicProvider().error_for(response)
    assert (error.status, error.permanent) == (expected_status, permanent)
    assert "hunter2" not in error.message and "hunter2" not in json.dumps(error.envelope())
    assert "sk-ant-test" not in json.dumps(error.envelope())
