from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import Client, override_settings

from billing.models import UsageRecord
from proxy.models import ModelRoute

from ..conftest import Party
from ..factories import make_key
from .v1_client import CHAT, COMPLETIONS, EMBEDDINGS, HELLO, assert_envelope, chat, post

def assert_one_rejected_row(response: HttpResponse, before: int, status: int) -> UsageRecord:
    assert UsageRecord.objects.count() == before + 1
    row = UsageRecord.objects.get(request_id=uuid.UUID(response["x-request-id"]))
    assert (row.end_reason, row.status_code) == ("rejected", status)
    assert (row.prompt_tokens, row.completion_tokens) == (0, 0)
    return row


@pytest.mark.parametrize(
    ("url", "body", "param", "code"),
    [
        pytest.param(CHAT, '{"model": "demo", "messages": [', None, "invalid_json", id="malformed-json"),
        pytest.param(CHAT, "", None, "invalid_json", id="empty-body"),
        pytest.param(CHAT, b'{"model": "\xff\xfe"}', None, "invalid_json", id="not-utf8"),
        pytest.param(CHAT, json.dumps([chat()]), None, "invalid_json", id="json-array"),
        pytest.param(CHAT, '"demo"', None, "invalid_json", id="json-string"),
        # A deeply nested body makes json.loads raise RecursionError, which is not a ValueError.
        pytest.param(CHAT, "[" * 100_000, None, "invalid_json", id="deeply-nested-json"),
        pytest.param(CHAT, {"messages": HELLO}, "model", "invalid_value", id="missing-model"),
        pytest.param(CHAT, chat(model=None), "model", "invalid_value", id="null-model"),
        pytest.param(CHAT, chat(model=42), "model", "invalid_type", id="model-int"),
        pytest.param(CHAT, chat(model=["demo"]), "model", "invalid_type", id="model-list"),
        pytest.param(CHAT, chat(model=True), "model", "invalid_type", id="model-bool"),
        pytest.param(CHAT, chat(model=""), "model", "invalid_value", id="empty-model"),
        pytest.param(CHAT, chat(model="   "), "model", "invalid_value", id="blank-model"),
        pytest.param(CHAT, {"model": "demo"}, "messages", "invalid_value", id="missing-messages"),
        pytest.param(CHAT, chat(messages="hello"), "messages", "invalid_type", id="messages-string"),
        pytest.param(CHAT, chat(messages={"role": "user", "content": "hi"}), "messages", "invalid_type",
                     id="messages-object"),
        pytest.param(CHAT, chat(messages=[]), "messages", "invalid_value", id="messages-empty"),
        pytest.param(CHAT, chat(messages=["hi"]), "messages[0]", "invalid_type", id="message-not-object"),
        pytest.param(CHAT, chat(messages=[{"content": "hi"}]), "messages[0].role", "invalid_value", id="no-role"),
        pytest.param(CHAT, chat(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role", "invalid_value",
                     id="bad-role"),
        pytest.param(CHAT, chat(messages=[{"role": ["user"], "content": "hi"}]), "messages[0].role", "invalid_type",
                     id="role-list"),
        pytest.param(CHAT, chat(messages=[*HELLO, {"role": "assistant", "content": 42}]), "messages[1].content",
                     "invalid_type", id="content-int"),
        pytest.param(CHAT, chat(messages=[{"role": "user", "content": {"text": "hi"}}]), "messages[0].content",
                     "invalid_type", id="content-object"),
        pytest.param(CHAT, chat(messages=[{"role": "user"}]), "messages[0].content", "invalid_value",
                     id="content-missing"),
        pytest.param(CHAT, chat(stream="true"), "stream", "invalid_type", id="stream-string"),
        pytest.param(CHAT, chat(stream=1), "stream", "invalid_type", id="stream-int"),
        pytest.param(CHAT, chat(stream_options={"include_usage": True}), "stream_options", "invalid_value",
                     id="stream-options-without-stream"),
        pytest.param(CHAT, chat(stream=False, stream_options={"include_usage": True}), "stream_options",
                     "invalid_value", id="stream-options-stream-false"),
        pytest.param(CHAT, chat(stream=True, stream_options="usage"), "stream_options", "invalid_type",
                     id="stream-options-string"),
        pytest.param(CHAT, chat(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage",
                     "invalid_type", id="include-usage-string"),
        pytest.param(CHAT, chat(max_tokens=0), "max_tokens", "invalid_value", id="max-tokens-zero"),
        pytest.param(CHAT, chat(max_tokens=-5), "max_tokens", "invalid_value", id="max-tokens-negative"),
        pytest.param(CHAT, chat(max_tokens="100"), "max_tokens", "invalid_type", id="max-tokens-string"),
        pytest.param(CHAT, chat(max_tokens=1.5), "max_tokens", "invalid_type", id="max-tokens-float"),
        pytest.param(CHAT, chat(max_completion_tokens=0), "max_completion_tokens", "invalid_value",
                     id="max-completion-tokens-zero"),
        pytest.param(CHAT, chat(temperature=2.5), "temperature", "invalid_value", id="temperature-high"),
        pytest.param(CHAT, chat(temperature=-0.1), "temperature", "invalid_value", id="temperature-negative"),
        pytest.param(CHAT, chat(temperature="hot"), "temperature", "invalid_type", id="temperature-string"),
        pytest.param(CHAT, chat(n=17), "n", "invalid_value", id="n-too-large"),
        pytest.param(CHAT, chat(n=0), "n", "invalid_value", id="n-zero"),
        pytest.param(COMPLETIONS, {"model": "demo"}, "prompt", "invalid_value", id="completions-missing-prompt"),
        pytest.param(COMPLETIONS, {"model": "demo", "prompt": 42}, "prompt", "invalid_type",
                     id="completions-prompt-int"),
        pytest.param(COMPLETIONS, {"model": "demo", "prompt": []}, "prompt", "invalid_value",
                     id="completions-prompt-empty"),
        pytest.param(COMPLETIONS, {"prompt": "hi"}, "model", "invalid_value", id="completions-missing-model"),
        pytest.param(EMBEDDINGS, {"model": "demo"}, "input", "invalid_value", id="embeddings-missing-input"),
        pytest.param(EMBEDDINGS, {"model": "demo", "input": {"text": "hi"}}, "input", "invalid_type",
                     id="embeddings-input-object"),
        pytest.param(EMBEDDINGS, {"model": "demo", "input": [{"text": "hi"}]}, "input[0]", "invalid_type",
                     id="embeddings-input-list-of-objects"),
        pytest.param(EMBEDDINGS, "{", None, "invalid_json", id="embeddings-malformed-json"),
        # Content parts
        *[pytest.param(CHAT, chat(messages=[{"role": "user", "content": parts}]), param, code, id=name) for name, parts, param, code in [
            ("part-not-object", ["hi"], "messages[0].content[0]", "invalid_type"),
            ("part-without-type", [{"text": "hi"}], "messages[0].content[0].type", "invalid_value"),
            ("part-type-int", [{"type": 1, "text": "hi"}], "messages[0].content[0].type", "invalid_type"),
            ("text-part-without-text", [{"type": "text"}], "messages[0].content[0].text", "invalid_value"),
            ("image-part-without-image-url", [{"type": "image_url"}], "messages[0].content[0].image_url", "invalid_value"),
            ("image-url-plain-string", [{"type": "image_url", "image_url": "http://x/y.png"}],
             "messages[0].content[0].image_url", "invalid_type"),
            ("image-url-without-url", [{"type": "image_url", "image_url": {}}], "messages[0].content[0].image_url.url",
             "invalid_value"),
            ("image-url-url-list", [{"type": "image_url", "image_url": {"url": ["x"]}}],
             "messages[0].content[0].image_url.url", "invalid_type"),
            ("image-url-bad-detail", [{"type": "image_url", "image_url": {"url": "x", "detail": "max"}}],
             "messages[0].content[0].image_url.detail", "invalid_value"),
            ("input-audio-string", [{"type": "input_audio", "input_audio": "AAAA"}],
             "messages[0].content[0].input_audio", "invalid_type"),
            ("unknown-part-not-object", [{"type": "text", "text": "a"}, 7], "messages[0].content[1]", "invalid_type"),
        ]],
        # Tools, legacy functions, tool calls
        pytest.param(CHAT, chat(tools={"type": "function"}), "tools", "invalid_type", id="tools-object"),
        pytest.param(CHAT, chat(tools=["f"]), "tools[0]", "invalid_type", id="tool-not-object"),
        pytest.param(CHAT, chat(tools=[{"function": {"name": "f"}}]), "tools[0].type", "invalid_value", id="tool-no-type"),
        pytest.param(CHAT, chat(tools=[{"type": ["function"], "function": {"name": "f"}}]), "tools[0].type", "invalid_type",
                     id="tool-type-list"),
        pytest.param(CHAT, chat(tools=[{"type": "function"}]), "tools[0].function", "invalid_value", id="tool-no-function"),
        pytest.param(CHAT, chat(tools=[{"type": "function", "function": "f"}]), "tools[0].function", "invalid_type",
                     id="tool-function-string"),
        pytest.param(CHAT, chat(tools=[{"type": "function", "function": {"name": 3}}]), "tools[0].function.name",
                     "invalid_type", id="tool-name-int"),
        pytest.param(CHAT, chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
                     "tools[0].function.parameters", "invalid_type", id="tool-parameters-string"),
        pytest.param(CHAT, chat(functions=[{"parameters": {}}]), "functions[0].name", "invalid_value", id="function-no-name"),
        pytest.param(CHAT, chat(functions="f"), "functions", "invalid_type", id="functions-string"),
        pytest.param(CHAT, chat(messages=[*HELLO, {"role": "assistant", "tool_calls": {"id": "c1"}}]),
                     "messages[1].tool_calls", "invalid_type", id="tool-calls-object"),
        pytest.param(CHAT, chat(messages=[*HELLO, {"role": "assistant", "tool_calls": [[]]}]),
                     "messages[1].tool_calls[0]", "invalid_type", id="tool-call-not-object"),
        pytest.param(CHAT, chat(messages=[*HELLO, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]}]),
                     "messages[1].tool_calls[0].function", "invalid_value", id="tool-call-no-function"),
        pytest.param(CHAT, chat(messages=[*HELLO, {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]),
                     "messages[1].tool_calls[0].function.arguments", "invalid_type", id="tool-call-arguments-object"),
        pytest.param(CHAT, chat(messages=[*HELLO, {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": None, "arguments": "{}"}}]}]),
                     "messages[1].tool_calls[0].function.name", "invalid_value", id="tool-call-name-null"),
        # response_format and stop
        pytest.param(CHAT, chat(response_format="json_object"), "response_format", "invalid_type",
                     id="response-format-string"),
        pytest.param(CHAT, chat(response_format={}), "response_format.type", "invalid_value", id="response-format-no-type"),
        pytest.param(CHAT, chat(response_format={"type": "json_schema"}), "response_format.json_schema", "invalid_value",
                     id="response-format-json-schema-missing"),
        pytest.param(CHAT, chat(response_format={"type": "json_schema", "json_schema": "{}"}), "response_format.json_schema",
                     "invalid_type", id="response-format-json-schema-string"),
        pytest.param(CHAT, chat(stop=5), "stop", "invalid_type", id="stop-int"),
        pytest.param(CHAT, chat(stop=["a", 5]), "stop[1]", "invalid_type", id="stop-list-with-int"),
        pytest.param(CHAT, chat(top_p=1.5), "top_p", "invalid_value", id="top-p-high"),
        # Embeddings input and completions prompt
        *[pytest.param(url, {"model": "demo", name: value}, param, code, id=f"{name}-{case}")
          for url, name in [(EMBEDDINGS, "input"), (COMPLETIONS, "prompt")]
          for case, value, param, code in [
              ("empty-list", [], name, "invalid_value"),
              ("bool", True, name, "invalid_type"),
              ("float", 1.5, name, "invalid_type"),
              ("list-of-floats", [1.5], f"{name}[0]", "invalid_type"),
              ("list-of-bools", [True], f"{name}[0]", "invalid_type"),
              ("negative-token", [1, -1], f"{name}[1]", "invalid_value"),
              ("token-too-large", [2**31], f"{name}[0]", "invalid_value"),
              ("huge-token", [2**70], f"{name}[0]", "invalid_value"),
              ("empty-inner-list", [[1], []], f"{name}[1]", "invalid_value"),
              ("inner-list-of-strings", [["a"]], f"{name}[0][0]", "invalid_type"),
              ("nested-too-deep", [[[1]]], f"{name}[0][0]", "invalid_type"),
              ("mixed-strings-and-tokens", ["a", 1], f"{name}[1]", "invalid_type"),
              ("mixed-tokens-and-lists", [1, [1]], f"{name}[1]", "invalid_type"),
              ("null-in-list", ["a", None], f"{name}[1]", "invalid_type"),
          ]],
        # n and best_of
        pytest.param(COMPLETIONS, {"model": "demo", "prompt": "hi", "best_of": 21}, "best_of", "invalid_value",
                     id="best-of-too-large"),
        pytest.param(COMPLETIONS, {"model": "demo", "prompt": "hi", "best_of": 0}, "best_of", "invalid_value",
                     id="best-of-zero"),
        pytest.param(COMPLETIONS, {"model": "demo", "prompt": "hi", "best_of": "2"}, "best_of", "invalid_type",
                     id="best-of-string"),
        pytest.param(COMPLETIONS, {"model": "demo", "prompt": "hi", "best_of": 2, "n": 3}, "best_of", "invalid_value",
                     id="best-of-below-n"),
        pytest.param(CHAT, chat(n=True), "n", "invalid_type", id="n-bool"),
    ],
)
def test_invalid_body_is_400_naming_the_param(
    client: Client, alice: Party, demo: ModelRoute, url: str, body: Any, param: str | None, code: str
) -> None:
    before = UsageRecord.objects.count()
    response = post(client, url, body, alice.auth)
    error = assert_envelope(response, 400, param, code)
    assert error["type"] == "invalid_request_error"
    row = assert_one_rejected_row(response, before, 400)
    assert (row.tenant_id, row.key_id, row.error_code) == (alice.tenant.pk, alice.key.pk, code)


def test_unknown_model_is_404(client: Client, alice: Party, demo: ModelRoute) -> None:
    before = UsageRecord.objects.count()
    response = post(client, CHAT, chat(model="no-such-model"), alice.auth)
    assert_envelope(response, 404, "model", "model_not_found")
    row = assert_one_rejected_row(response, before, 404)
    assert row.public_model == "no-such-model"


def test_model_outside_the_keys_allowed_models_is_403(client: Client, alice: Party, demo: ModelRoute) -> None:
    key, secret = make_key(alice.tenant, name="only other", allowed_models=["other"])
    before = UsageRecord.objects.count()
    response = post(client, CHAT, chat(), {"Authorization": f"Bearer {secret}"})
    assert_envelope(response, 403, "model", "model_not_allowed")
    assert assert_one_rejected_row(response, before, 403).key_id == key.pk


@override_settings(TOLLGATE_MAX_BODY_BYTES=2048, DATA_UPLOAD_MAX_MEMORY_SIZE=2048)
def test_oversized_body_is_413(client: Client, alice: Party, demo: ModelRoute) -> None:
    body = chat(messages=[{"role": "user", "content": "x" * 4096}])
    before = UsageRecord.objects.count()
    response = post(client, CHAT, body, alice.auth)
    assert_envelope(response, 413, None, "request_too_large")
    assert_one_rejected_row(response, before, 413)


@override_settings(TOLLGATE_MAX_BODY_BYTES=2048, DATA_UPLOAD_MAX_MEMORY_SIZE=2048)
def test_body_at_the_limit_is_accepted(client: Client, alice: Party, demo: ModelRoute) -> None:
    padding = 2048 - len(json.dumps(chat(messages=[{"role": "user", "content": ""}])))
    body = chat(messages=[{"role": "user", "content": "x" * padding}])
    assert len(json.dumps(body)) == 2048
    assert (response := post(client, CHAT, body, alice.auth)).status_code == 200, response.content


def test_get_is_405(client: Client, alice: Party, demo: ModelRoute) -> None:
    before = UsageRecord.objects.count()
    response = client.get(CHAT, headers=alice.auth)
    assert_envelope(response, 405, None, "method_not_allowed")
    assert_one_rejected_row(response, before, 405)


def test_valid_demo_chat_is_200_with_request_id_and_overhead(client: Client, alice: Party, demo: ModelRoute) -> None:
    before = UsageRecord.objects.count()
    response = post(client, CHAT, chat(max_tokens=50, temperature=0.5, n=1), alice.auth)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json()["choices"][0]["message"]["content"].startswith("Hello from Tollgate's demo model!")
    assert UsageRecord.objects.count() == before + 1
    row = UsageRecord.objects.get(tenant=alice.tenant)
    assert response["x-request-id"] == row.request_id.hex
    assert float(response["x-tollgate-overhead-ms"]) >= 0
    assert (row.end_reason, row.status_code, row.public_model, row.endpoint) == ("complete", 200, "demo", "chat")
    assert row.prompt_tokens > 0 and row.completion_tokens > 0


# 1. Content parts whose text is not a string


@pytest.mark.parametrize(
    ("text", "code"),
    [(5, "invalid_type"), (["a"], "invalid_type"), ({"a": 1}, "invalid_type"), (True, "invalid_type"),
     (None, "invalid_value")],  # null is a missing value, as everywhere else
    ids=["int", "list", "object", "bool", "null"],
)
def test_text_part_whose_text_is_not_a_string_is_400_naming_it(
    client: Client, alice: Party, demo: ModelRoute, text: Any, code: str
) -> None:
    before = UsageRecord.objects.count()
    body = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "fine"}, {"type": "text", "text": text}]}])
    response = post(client, CHAT, body, alice.auth)
    assert_envelope(response, 400, "messages[0].content[1].text", code)
    assert_one_rejected_row(response, before, 400)


# 2. Lone surrogates (valid JSON escapes that no UTF-8 text can hold)


@pytest.mark.parametrize(
    ("url", "body", "param"),
    [
        pytest.param(CHAT, '{"model": "demo", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
                     "messages[0].content", id="in-content"),
        pytest.param(CHAT, '{"model": "demo", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\uDFFF"}]}]}',
                     "messages[0].content[0].text", id="in-a-part-upper-case-escape"),
        pytest.param(CHAT, '{"model": "de\\ud83dmo", "messages": [{"role": "user", "content": "hi"}]}', "model",
                     id="in-model"),
        pytest.param(CHAT, '{"model": "demo", "user": "\\udc00", "messages": [{"role": "user", "content": "hi"}]}',
                     "user", id="in-an-unread-field"),
        pytest.param(CHAT, '{"model": "demo", "metadata": {"\\ud800": "x"}, "messages": [{"role": "user", "content": "hi"}]}',
                     "metadata", id="in-a-key"),
        pytest.param(COMPLETIONS, '{"model": "demo", "prompt": ["ok", "\\ude00"]}', "prompt[1]", id="in-a-prompt-list"),
        pytest.param(EMBEDDINGS, '{"model": "demo", "input": "\\ud800"}', "input", id="in-embeddings-input"),
    ],
)
def test_lone_surrogate_anywhere_in_the_body_is_400(
    client: Client, alice: Party, demo: ModelRoute, url: str, body: str, param: str
) -> None:
    before = UsageRecord.objects.count()
    response = post(client, url, body, alice.auth)
    error = assert_envelope(response, 400, param, "invalid_value")
    assert error["type"] == "invalid_request_error"
    assert_one_rejected_row(response, before, 400)


def test_surrogate_bytes_in_the_body_are_invalid_json(client: Client, alice: Party, demo: ModelRoute) -> None:
    # UTF-8 cannot encode a surrogate; Python's JSON decoder would accept these bytes ("surrogatepass").
    body = b'{"model": "demo", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}'
    assert_envelope(post(client, CHAT, body, alice.auth), 400, None, "invalid_json")


def test_escaped_surrogate_pair_is_an_ordinary_character(client: Client, alice: Party, demo: ModelRoute) -> None:
    body = '{"model": "demo", "messages": [{"role": "user", "content": "smile \\ud83d\\ude00 \\\\ud800"}]}'
    response = post(client, CHAT, body, alice.auth)
    assert response.status_code == 200, response.content


def test_nan_and_infinity_are_invalid_json(client: Client, alice: Party, demo: ModelRoute) -> None:
    for constant in ("NaN", "Infinity", "-Infinity"):
        body = '{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "top_p": %s}' % constant
        assert_envelope(post(client, CHAT, body, alice.auth), 400, None, "invalid_json")


# 3. NUL in strings that are stored


def test_nul_in_the_model_name_is_400_and_the_row_is_written(client: Client, alice: Party, demo: ModelRoute) -> None:
    before = UsageRecord.objects.count()
    response = post(client, CHAT, chat(model="demo\x00"), alice.auth)
    assert_envelope(response, 400, "model", "invalid_value")
    row = assert_one_rejected_row(response, before, 400)
    assert "\x00" not in row.public_model


@pytest.mark.needs_postgres
def test_nul_in_the_model_name_leaves_a_row_on_postgres(client: Client, alice: Party, demo: ModelRoute) -> None:
    before = UsageRecord.objects.count()
    response = post(client, EMBEDDINGS, {"model": "\x00", "input": "hi"}, alice.auth)
    assert_envelope(response, 400, "model", "invalid_value")
    assert_one_rejected_row(response, before, 400)


# 6. Completion token limits


@pytest.mark.parametrize(
    ("url", "fields", "param"),
    [
        pytest.param(CHAT, {"max_tokens": 2**63}, "max_tokens", id="max-tokens-2-63"),
        pytest.param(CHAT, {"max_completion_tokens": 2**63}, "max_completion_tokens", id="max-completion-tokens-2-63"),
        pytest.param(CHAT, {"max_tokens": 10**400 // 10**390}, "max_tokens", id="max-tokens-1e10"),
        pytest.param(CHAT, {"max_tokens": 1_000_001}, "max_tokens", id="max-tokens-just-above"),
        pytest.param(CHAT, {"max_tokens": 100_000, "n": 11}, "max_tokens", id="n-times-max-tokens"),
        pytest.param(CHAT, {"max_completion_tokens": 500_000, "n": 3}, "max_completion_tokens",
                     id="n-times-max-completion-tokens"),
        pytest.param(COMPLETIONS, {"max_tokens": 2**63}, "max_tokens", id="completions-max-tokens-2-63"),
        pytest.param(COMPLETIONS, {"max_tokens": 100_000, "best_of": 11}, "max_tokens", id="best-of-times-max-tokens"),
    ],
)
def test_max_tokens_beyond_what_any_model_produces_is_400(
    client: Client, alice: Party, demo: ModelRoute, url: str, fields: dict[str, Any], param: str
) -> None:
    base = chat() if url == CHAT else {"model": "demo", "prompt": "hi"}
    before = UsageRecord.objects.count()
    response = post(client, url, {**base, **fields}, alice.auth)
    assert_envelope(response, 400, param, "invalid_value")
    assert_one_rejected_row(response, before, 400)


def test_max_tokens_at_the_limit_is_accepted(client: Client, alice: Party, demo: ModelRoute) -> None:
    response = post(client, CHAT, chat(max_tokens=1_000_000), alice.auth)
    assert response.status_code == 200, response.content
    response = post(client, CHAT, chat(max_tokens=500_000, n=2), alice.auth)
    assert response.status_code == 200, response.content


# 7. Accepted shapes: everything the validation checks, in its valid forms


@pytest.mark.parametrize(
    ("url", "body"),
    [
        pytest.param(CHAT, chat(messages=[{"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "file", "file": {"file_id": "file-1"}},
        ]}]), id="content-parts"),
        pytest.param(CHAT, chat(
            messages=[*HELLO,
                      {"role": "assistant", "content": None,
                       "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                      {"role": "tool", "tool_call_id": "c1", "content": "42"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            tool_choice="auto",
        ), id="tools-and-tool-calls"),
        pytest.param(CHAT, chat(functions=[{"name": "f", "parameters": {}}], function_call="auto"), id="functions"),
        pytest.param(CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
                     id="response-format-json-schema"),
        pytest.param(CHAT, chat(response_format={"type": "json_object"}, stop=["\n"], top_p=0.5), id="response-format"),
        pytest.param(COMPLETIONS, {"model": "demo", "prompt": [1, 2, 3], "n": 2, "best_of": 3}, id="prompt-token-ids"),
        pytest.param(COMPLETIONS, {"model": "demo", "prompt": [[1, 2], [2**31 - 1]]}, id="prompt-token-id-lists"),
        pytest.param(COMPLETIONS, {"model": "demo", "prompt": ["a", "b"]}, id="prompt-strings"),
        pytest.param(EMBEDDINGS, {"model": "demo", "input": ["a", ""]}, id="input-strings"),
        pytest.param(EMBEDDINGS, {"model": "demo", "input": [0, 5]}, id="input-token-ids"),
        pytest.param(EMBEDDINGS, {"model": "demo", "input": [[0], [5, 6]]}, id="input-token-id-lists"),
    ],
)
def test_valid_shapes_are_accepted(client: Client, alice: Party, demo: ModelRoute, url: str, body: Any) -> None:
    response = post(client, url, body, alice.auth)
    assert response.status_code == 200, response.content
