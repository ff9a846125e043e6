"""AWS Bedrock's Converse API: OpenAI chat to Converse and back (messages, system, inference settings, tools, images,
stop reasons, usage with prompt-cache reads and writes), SigV4 signing, and Bedrock's errors."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from proxy.errors import GatewayError, ProviderError
from proxy.models import Provider
from proxy.providers.base import ApiRequest, JSONDict, Target, UpstreamReply
from proxy.providers.bedrock import BedrockProvider
from proxy.providers.bedrock_converse import StreamTranslator

AKID, SECRET, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjEXAMPLETOKEN=="
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROVIDER = Provider(name="aws", kind="bedrock", region="us-west-2")
TARGET = Target(public_model="claude-aws", deployment_id=1, provider_name="aws", kind="bedrock",
                base_url=PROVIDER.resolved_base_url(), upstream_model=MODEL, api_key=f"{AKID}:{SECRET}:{TOKEN}",
                options=PROVIDER.quirks())
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def build(data: JSONDict, *, stream: bool = False, target: Target = TARGET) -> tuple[str, JSONDict, dict[str, str]]:
    request = BedrockProvider().build_request(target, ApiRequest("chat", "claude-aws", data, stream=stream))
    return request.url, request.json(), {k.lower(): v for k, v in request.headers.items()}


def test_requests_are_signed_for_bedrock_in_the_providers_region() -> None:
    url, _, headers = build({"messages": [{"role": "user", "content": "hi"}]})
    assert url == f"https://bedrock-runtime.us-west-2.amazonaws.com/model/{MODEL}/converse"
    authorization = headers["authorization"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={AKID}/")
    assert "/us-west-2/bedrock/aws4_request, SignedHeaders=" in authorization
    assert "x-amz-date" in authorization and "x-amz-security-token" in authorization
    assert headers["x-amz-security-token"] == TOKEN and SECRET not in json.dumps(headers)
    stream_url, _, stream_headers = build({"messages": [{"role": "user", "content": "hi"}]}, stream=True)
    assert stream_url.endswith("/converse-stream") and stream_headers["accept"] == "application/vnd.amazon.eventstream"


def test_an_inference_profile_arn_is_escaped_in_the_path_and_no_token_means_none_sent() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5"
    target = dataclasses.replace(TARGET, upstream_model=arn, api_key=f"{AKID}:{SECRET}")
    url, _, headers = build({"messages": [{"role": "user", "content": "hi"}]}, target=target)
    assert url.endswith("/model/arn:aws:bedrock:us-east-1:123456789012:inference-profile%2Fus.anthropic."
                        "claude-sonnet-4-5/converse")
    assert "x-amz-security-token" not in headers


@pytest.mark.parametrize("credential", ["", "only-an-id", ":secret", "id:"])
def test_a_credential_not_in_the_aws_form_is_a_clear_error(credential: str) -> None:
    with pytest.raises(ProviderError) as caught:
        build({"messages": [{"role": "user", "content": "hi"}]}, target=dataclasses.replace(TARGET, api_key=credential))
    assert (caught.value.status, caught.value.code) == (502, "upstream_auth_failed")
    assert "ACCESS_KEY_ID:SECRET_ACCESS_KEY" in caught.value.message


def test_signing_logs_no_credential(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        build({"messages": [{"role": "user", "content": "hi"}]})
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert TOKEN not in logged and SECRET not in logged


def test_messages_system_and_inference_settings() -> None:
    _, payload, _ = build({
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": ""}]},
            {"role": "developer", "content": [{"type": "text", "text": "In French."}]},
            {"role": "assistant", "content": "trois"},
            {"role": "user", "content": "four"},
        ],
        "max_completion_tokens": 300, "temperature": 0.2, "top_p": 0.9, "stop": "END", "user": "u-1", "seed": 3,
    })
    assert payload == {
        "system": [{"text": "Be brief."}, {"text": "In French."}],
        "messages": [{"role": "user", "content": [{"text": "one"}, {"text": "two"}]},
                     {"role": "assistant", "content": [{"text": "trois"}]},
                     {"role": "user", "content": [{"text": "four"}]}],
        "inferenceConfig": {"maxTokens": 300, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
    }


def test_images_go_as_base64_bytes() -> None:
    _, payload, _ = build({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG}"}},
    ]}]})
    assert payload["messages"][0]["content"][1:] == [{"image": {"format": "png", "source": {"bytes": PNG}}},
                                                     {"image": {"format": "jpeg", "source": {"bytes": PNG}}}]


@pytest.mark.parametrize(("part", "param"), [
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "messages[0].content[0].image_url"),
    ({"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}, "messages[0].content[0].image_url"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "messages[0].content[0]"),
])
def test_content_converse_cannot_take_is_a_400_naming_it(part: JSONDict, param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        build({"messages": [{"role": "user", "content": [part]}]})
    assert (caught.value.status, caught.value.param) == (400, param)


TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.mark.parametrize(("choice", "expected"), [
    (None, {"auto": {}}), ("auto", {"auto": {}}), ("required", {"any": {}}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"tool": {"name": "get_weather"}}),
])
def test_tools_and_tool_choice(choice: Any, expected: JSONDict) -> None:
    data: JSONDict = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [TOOL]}
    if choice is not None:
        data["tool_choice"] = choice
    _, payload, _ = build(data)
    assert payload["toolConfig"] == {"tools": [{"toolSpec": {
        "name": "get_weather", "description": "Weather for a city.",
        "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}}],
        "toolChoice": expected}


def test_a_tool_round_trip_and_tool_choice_none() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "tooluse_1", "content": "18°C, sunny"},
    ]
    _, payload, _ = build({"messages": messages, "tools": [TOOL], "tool_choice": "none"})
    assert payload["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather",
                                                       "input": {"city": "Paris"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "18°C, sunny"}]}}]},
    ]
    assert "toolChoice" not in payload["toolConfig"]  # the conversation used the tool: Converse needs it defined
    _, fresh, _ = build({"messages": messages[:1], "tools": [TOOL], "tool_choice": "none"})
    assert "toolConfig" not in fresh


@pytest.mark.parametrize(("data", "param"), [
    ({"n": 2}, "n"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "narrator", "content": "x"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
])
def test_requests_converse_cannot_serve_are_a_400_naming_the_parameter(data: JSONDict, param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        build({"messages": [{"role": "user", "content": "hi"}], **data})
    assert (caught.value.status, caught.value.param) == (400, param)


def test_an_answer_becomes_a_chat_completion_with_cache_usage() -> None:
    data = {"output": {"message": {"role": "assistant", "content": [
                {"text": "Let me check."},
                {"toolUse": {"toolUseId": "tooluse_9", "name": "get_weather", "input": {"city": "Paris"}}}]}},
            "stopReason": "tool_use", "metrics": {"latencyMs": 812},
            "usage": {"inputTokens": 12, "outputTokens": 30, "totalTokens": 3042, "cacheReadInputTokens": 2000,
                      "cacheWriteInputTokens": 1000}}
    completion = BedrockProvider().parse_response(TARGET, ApiRequest("chat", "claude-aws", {}), data)
    payload = completion.payload
    assert payload["model"] == "claude-aws" and payload["object"] == "chat.completion"
    assert payload["id"].startswith("chatcmpl-")
    [choice] = payload["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"] == [{"id": "tooluse_9", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert completion.usage is not None
    assert dataclasses.astuple(completion.usage) == (3012, 30, 2000, 1000)  # prompt incl. cache, out, read, write
    assert payload["usage"] == {"prompt_tokens": 3012, "completion_tokens": 30, "total_tokens": 3042,
                                "prompt_tokens_details": {"cached_tokens": 2000}}


@pytest.mark.parametrize(("reason", "finish"), [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
                                                ("guardrail_intervened", "content_filter"), ("something_new", "stop")])
def test_stop_reasons(reason: str, finish: str) -> None:
    data = {"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}}, "stopReason": reason}
    completion = BedrockProvider().parse_response(TARGET, ApiRequest("chat", "claude-aws", {}), data)
    assert completion.payload["choices"][0]["finish_reason"] == finish


def test_stream_events_become_chat_chunks() -> None:
    translator = StreamTranslator(TARGET)
    events: list[tuple[str, JSONDict]] = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Checking"}, "p": "abcdefgh"}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu_1", "name": "get_weather"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city":'}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Paris"}'}}}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 5, "outputTokens": 9, "totalTokens": 14}, "metrics": {"latencyMs": 1}}),
    ]
    chunks = [chunk for kind, data in events for chunk in translator.event(kind, data)]
    payloads = [json.loads(c.data or b"") for c in chunks]
    assert {p["model"] for p in payloads} == {"claude-aws"} and len({p["id"] for p in payloads}) == 1
    assert payloads[1]["choices"][0]["delta"] == {"content": "Checking"}
    assert payloads[2]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "tu_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]
    assert "".join(p["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for p in payloads[3:5]) == \
        '{"city":"Paris"}'
    finish, usage = chunks[-2:]
    assert finish.finished and payloads[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert usage.usage_only and usage.usage is not None and dataclasses.astuple(usage.usage) == (5, 9, 0, 0)


def error(status: int, kind: str, message: str = "details that may quote the prompt: hunter2",
          **headers: str) -> ProviderError:
    content = json.dumps({"message": message}).encode()
    return BedrockProvider().error_for(UpstreamReply(status, {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/",
                                                              **headers}, content))


@pytest.mark.parametrize(("status", "kind", "expected"), [
    (429, "ThrottlingException", (429, "upstream_rate_limited", False)),
    (400, "ValidationException", (400, "upstream_bad_request", True)),
    (403, "AccessDeniedException", (502, "upstream_auth_failed", False)),
    (404, "ResourceNotFoundException", (502, "upstream_model_not_found", False)),
    (429, "ModelNotReadyException", (502, "upstream_error", False)),
    (503, "ServiceUnavailableException", (502, "upstream_error", False)),
    (424, "ModelErrorException", (502, "upstream_error", False)),
])
def test_bedrock_errors_map_to_openai_statuses_without_their_message(status: int, kind: str,
                                                                      expected: tuple[int, str, bool]) -> None:
    mapped = error(status, kind)
    assert (mapped.status, mapped.code, mapped.permanent) == expected
    assert "hunter2" not in json.dumps(mapped.envelope())


def test_a_prompt_too_long_is_context_length_exceeded_and_retry_after_is_kept() -> None:
    assert error(400, "ValidationException", "Input is too long for requested model.").code == "context_length_exceeded"
    assert error(429, "ThrottlingException", **{"retry-after": "3"}).retry_after == "3"


def test_a_bedrock_provider_needs_a_region(db: None) -> None:
    with pytest.raises(ValidationError) as caught:
        Provider(name="aws-a", kind="bedrock").full_clean()
    assert "region" in caught.value.message_dict
    Provider(name="aws-b", kind="bedrock", region="eu-central-1").full_clean()
    assert Provider(kind="bedrock", region="eu-central-1").resolved_base_url() == \
        "https://bedrock-runtime.eu-central-1.amazonaws.com"
