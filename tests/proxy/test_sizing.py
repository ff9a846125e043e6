from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from billing import tokens
from proxy.providers.base import CHAT, COMPLETIONS, EMBEDDINGS, ApiRequest
from proxy.sizing import Worst, image_tokens, worst_case

MODEL = "gpt-4o"
FRAMING = tokens.PER_MESSAGE + tokens.REPLY_PRIMING  # one message


def chat(**data: Any) -> Worst:
    data.setdefault("messages", [{"role": "user", "content": "hello world"}])
    return worst_case(ApiRequest(endpoint=CHAT, model=MODEL, data={"model": MODEL, **data}), MODEL)


def completions(**data: Any) -> Worst:
    return worst_case(ApiRequest(endpoint=COMPLETIONS, model=MODEL, data={"model": MODEL, **data}), MODEL)


def embeddings(value: object) -> Worst:
    return worst_case(ApiRequest(endpoint=EMBEDDINGS, model=MODEL, data={"model": MODEL, "input": value}), MODEL)


def image(detail: str | None) -> dict[str, Any]:
    url: dict[str, Any] = {"url": "https://example.com/cat.png"}
    if detail is not None:
        url["detail"] = detail
    return {"type": "image_url", "image_url": url}


def test_a_plain_message_is_its_text_plus_framing() -> None:
    assert chat().prompt_tokens == 2 + FRAMING  # "hello world" is 2 tokens


def test_n_multiplies_the_completion_tokens() -> None:
    one, sixteen = chat(max_tokens=100), chat(max_tokens=100, n=16)
    assert (one.completion_tokens, sixteen.completion_tokens) == (100, 1600)
    assert one.prompt_tokens == sixteen.prompt_tokens


def test_completion_tokens_come_from_the_request_or_the_default(settings: Any) -> None:
    settings.TOLLGATE_DEFAULT_COMPLETION_TOKENS = 777
    assert chat().completion_tokens == 777
    assert chat(max_tokens=50, max_completion_tokens=20).completion_tokens == 20
    parsed = ApiRequest(endpoint=CHAT, model=MODEL, data={"messages": []}, max_tokens=33)  # as proxy/parsing.py sets it
    assert worst_case(parsed, MODEL).completion_tokens == 33
    assert embeddings("hello").completion_tokens == 0


def test_best_of_counts_instead_of_n_when_larger() -> None:
    assert completions(prompt="hi", max_tokens=10, n=2, best_of=5).completion_tokens == 50
    assert completions(prompt="hi", max_tokens=10, n=3, best_of=2).completion_tokens == 30
    assert chat(max_tokens=10, best_of=5).completion_tokens == 10  # chat has no best_of


def test_a_large_tools_array_counts_about_its_tokens() -> None:
    tools = [{"type": "function", "function": {
        "name": f"lookup_{i}", "description": f"Look up record number {i} in the archive of invoices and orders.",
        "parameters": {"type": "object", "properties": {"id": {"type": "string", "description": "The record id."}}},
    }} for i in range(700)]
    text = json.dumps(tools, separators=(",", ":"))
    assert len(text) > 150_000
    added = chat(tools=tools).prompt_tokens - chat().prompt_tokens
    assert added == tokens.count([text], model=MODEL)
    assert added > 30_000


@pytest.mark.parametrize(("detail", "expected"), [("low", 85), ("high", 1445), ("auto", 1445), (None, 1445)])
def test_images_cost_openai_tiles(detail: str | None, expected: int) -> None:
    content = [{"type": "text", "text": "hello world"}, image(detail), image(detail)]
    worst = chat(messages=[{"role": "user", "content": content}])
    assert worst.images == 2
    assert worst.prompt_tokens == 2 + 2 * expected + FRAMING


def test_image_rules_differ_by_model_family() -> None:
    assert image_tokens("gpt-4o-mini", "high") == 2833 + 8 * 5667
    assert image_tokens("gpt-4o-mini", "low") == 2833
    assert image_tokens("openai/gpt-5", "high") == 70 + 8 * 140
    assert image_tokens("gpt-4.1-nano", "low") == image_tokens("gpt-4.1-nano", "high") == 3779  # 1536 patches x 2.46
    assert image_tokens("claude-sonnet-4-5", "low") == 1600


def test_token_arrays_count_by_their_length() -> None:
    assert completions(prompt=[1, 2, 3]).prompt_tokens == 3
    assert completions(prompt=[[1, 2], [3]]).prompt_tokens == 3
    assert embeddings([[5] * 10, [6] * 7]).prompt_tokens == 17
    assert embeddings(["hello world", "hello world"]).prompt_tokens == 4
    assert embeddings(["hello world", [1, 2, 3]]).prompt_tokens == 5
    assert completions(prompt="hello world", suffix="hello world").prompt_tokens == 4


def test_an_8_mb_one_word_prompt_is_held_at_its_bytes() -> None:
    prompt = "tollgate" * (1024 * 1024)
    assert chat(messages=[{"role": "user", "content": prompt}]).prompt_tokens == len(prompt) + FRAMING
    assert completions(prompt=prompt).prompt_tokens == len(prompt)


def test_the_byte_bound_covers_the_whole_request(settings: Any) -> None:
    settings.TOLLGATE_TOKENIZE_MAX_BYTES = 1024
    tools = [{"type": "function", "function": {"name": "f", "description": "x" * 600}}]
    messages = [{"role": "user", "content": "y" * 600}]
    worst = chat(messages=messages, tools=tools)
    assert worst.prompt_tokens == 600 + len(json.dumps(tools, separators=(",", ":"))) + FRAMING


def test_inline_audio_and_files_count_their_decoded_bytes() -> None:
    data = base64.b64encode(b"\0" * 3000).decode()
    audio = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    pdf = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64," + data}}
    assert chat(messages=[{"role": "user", "content": [audio]}]).prompt_tokens == 3000 + FRAMING
    assert chat(messages=[{"role": "user", "content": [pdf]}]).prompt_tokens == 3000 + FRAMING


SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {
    "city": {"type": "string"}}}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}
FILE = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}}
USER = {"role": "user", "content": "hello world"}


def turn(message: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A conversation with the message, and the same conversation with an empty message of that role."""
    return {"messages": [USER, message]}, {"messages": [USER, {"role": message["role"], "content": ""}]}


def parts(*content: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello world"}, *content]}]}, {}


PARTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # (request with the part, the same without it)
    "text part": parts({"type": "text", "text": "more text"}),
    "name": ({"messages": [USER | {"name": "alice"}]}, {}),
    "tool_calls": turn({"role": "assistant", "content": None, "tool_calls": [CALL]}),
    "function_call": turn({"role": "assistant", "content": None, "function_call": CALL["function"]}),
    "tool result": turn({"role": "tool", "tool_call_id": "call_1", "content": "22 degrees and sunny"}),
    "refusal": turn({"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]}),
    "image": parts(image("low")),
    "audio": parts(AUDIO),
    "file": parts(FILE),
    "tools": ({"tools": [{"type": "function", "function": CALL["function"] | {"parameters": {}}}]}, {}),
    "functions": ({"functions": [{"name": "get_weather", "parameters": {"type": "object"}}]}, {}),
    "tool_choice": ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, {}),
    "response_format": ({"response_format": SCHEMA}, {}),
}


@pytest.mark.parametrize("part", PARTS)
def test_every_part_type_adds_to_the_prompt(part: str) -> None:
    with_part, without = PARTS[part]
    assert chat(**with_part).prompt_tokens > chat(**without).prompt_tokens


@pytest.mark.parametrize("data", [
    {"messages": "hello"},
    {"messages": [42, None, ["x"]]},
    {"messages": [{"role": "user", "content": {"odd": True}}]},
    {"messages": [{"role": "user", "content": [7, {"type": "mystery", "blob": "abc"}, {"type": "image_url"}]}]},
    {"messages": [{"role": "assistant", "tool_calls": "nope", "function_call": 3}]},
    {"messages": [{"role": "user", "content": "\ud800 lone surrogate <|endoftext|>"}], "tools": "not a list"},
    {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": 5}},
                                               {"type": "file", "file": {"file_id": "file-abc"}}]}]},
    {"messages": [], "n": "5", "max_tokens": True, "best_of": -1},
])
def test_unexpected_shapes_count_as_their_json_and_never_raise(data: dict[str, Any]) -> None:
    worst = worst_case(ApiRequest(endpoint=CHAT, model=MODEL, data=data), MODEL)
    assert worst.prompt_tokens >= tokens.REPLY_PRIMING
    assert worst.completion_tokens > 0


@pytest.mark.parametrize("value", [None, 3, {"a": 1}, [], [True, False], [[1, "x"]], ["\udfff"]])
def test_odd_prompts_and_inputs_never_raise(value: object) -> None:
    assert completions(prompt=value).prompt_tokens >= 0
    assert embeddings(value).prompt_tokens >= 0
