"""Images and prompt caching on Anthropic routes: image_url parts as image blocks, cache_control passed on."""

from __future__ import annotations

import base64

import pytest
from openai.types.chat import ChatCompletion

from proxy.errors import GatewayError
from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.base import JSONDict

from .test_anthropic import TARGET, build, chat

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(64))).decode()


def user(*parts: JSONDict) -> JSONDict:
    return {"messages": [{"role": "user", "content": list(parts)}]}


def image(url: str, **extra: object) -> JSONDict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


@pytest.mark.parametrize(("url", "source"), [
    (f"data:image/png;base64,{PNG}", {"type": "base64", "media_type": "image/png", "data": PNG}),
    (f"data:image/JPEG;base64,{PNG}", {"type": "base64", "media_type": "image/jpeg", "data": PNG}),
    (f"data:image/gif;base64,{PNG}", {"type": "base64", "media_type": "image/gif", "data": PNG}),
    (f"data:image/webp;base64,{PNG}", {"type": "base64", "media_type": "image/webp", "data": PNG}),
    ("https://example.com/cat.png", {"type": "url", "url": "https://example.com/cat.png"}),
    ("http://example.com/cat.jpg", {"type": "url", "url": "http://example.com/cat.jpg"}),
])
def test_image_parts_become_image_blocks(url: str, source: JSONDict) -> None:
    _, payload = build(user({"type": "text", "text": "What is this?"}, image(url, detail="high")))
    assert payload["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image", "source": source}]}]


@pytest.mark.parametrize("url", [
    f"data:image/bmp;base64,{PNG}",  # a type Anthropic does not take
    f"data:application/pdf;base64,{PNG}",
    f"data:image/png,{PNG}",  # not base64
    "data:image/png;base64,",
    "data:image/png;base64,@@@not base64@@@",
    "ftp://example.com/cat.png",
    "file:///etc/passwd",
    "",
])
def test_images_anthropic_cannot_take_are_a_400_naming_the_part(url: str) -> None:
    with pytest.raises(GatewayError) as caught:
        build(user({"type": "text", "text": "hi"}, image(url)))
    assert (caught.value.status, caught.value.param) == (400, "messages[0].content[1].image_url")


def test_an_image_url_given_as_a_bare_string_is_read_too() -> None:
    _, payload = build(user({"type": "image_url", "image_url": "https://example.com/a.webp"}))
    assert payload["messages"][0]["content"] == [{"type": "image", "source": {"type": "url",
                                                                              "url": "https://example.com/a.webp"}}]


def test_images_in_a_tool_result_are_passed_on_but_not_in_assistant_or_system_turns() -> None:
    _, payload = build({"messages": [
        {"role": "user", "content": "Screenshot please"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": [image("https://example.com/s.png")]},
    ]})
    assert payload["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/s.png"}}]}]
    for role in ("assistant", "system"):
        with pytest.raises(GatewayError) as caught:
            build({"messages": [{"role": "user", "content": "hi"},
                                {"role": role, "content": [image("https://example.com/s.png")]}]})
        assert caught.value.param == "messages[1].content[0]"


def test_cache_control_on_parts_is_passed_on_and_makes_the_system_prompt_blocks() -> None:
    ephemeral = {"type": "ephemeral"}
    _, payload = build({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "A long manual.", "cache_control": ephemeral},
                                       {"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Question", "cache_control": {"type": "ephemeral",
                                                                                          "ttl": "1h"}},
                                     {**image("https://example.com/a.png"), "cache_control": ephemeral}]},
    ]})
    assert payload["system"] == [{"type": "text", "text": "A long manual.", "cache_control": ephemeral},
                                 {"type": "text", "text": "Be brief."}]
    assert payload["messages"][0]["content"] == [
        {"type": "text", "text": "Question", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}, "cache_control": ephemeral},
    ]


def test_a_system_prompt_without_cache_control_stays_one_string() -> None:
    _, payload = build({"messages": [{"role": "system", "content": [{"type": "text", "text": "One."},
                                                                    {"type": "text", "text": "Two."}]},
                                     {"role": "user", "content": "hi"}]})
    assert payload["system"] == "One.\n\nTwo."


def test_cache_reads_and_writes_are_reported_as_openai_usage_and_kept_apart() -> None:
    data = {"id": "msg_c", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "Seen."}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 7, "cache_creation_input_tokens": 1500, "cache_read_input_tokens": 2000,
                      "output_tokens": 3}}
    completion = AnthropicProvider().parse_response(TARGET, chat({}, stream=False), data)
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens, usage.completion_tokens) == (
        3507, 2000, 1500, 3)
    parsed = ChatCompletion.model_validate(completion.payload)
    assert parsed.usage is not None and parsed.usage.prompt_tokens == 3507
    assert parsed.usage.prompt_tokens_details is not None and parsed.usage.prompt_tokens_details.cached_tokens == 2000


def test_a_streamed_answer_reports_cache_writes_on_its_usage_chunk() -> None:
    translate = AnthropicProvider().stream_translator(TARGET, chat({}))
    translate('{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":5,'
              '"cache_creation_input_tokens":900,"cache_read_input_tokens":0,"output_tokens":1}}}')
    _, usage = translate('{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}')
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.cache_write_tokens, usage.usage.cached_tokens) == (905, 900, 0)
