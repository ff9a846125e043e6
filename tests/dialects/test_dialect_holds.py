"""A dialect request's budget hold counts what its chat form leaves out but a native route still sends and bills."""

from __future__ import annotations

from proxy import dialects, sizing
from proxy.providers.base import MESSAGES, RESPONSES

THINKING = "Let me weigh each option carefully before calling the tool. " * 200


def messages_body(with_thinking: bool) -> dict[str, object]:
    assistant: list[dict[str, object]] = [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}]
    if with_thinking:
        assistant.insert(0, {"type": "thinking", "thinking": THINKING, "signature": "c2lnbmVk"})
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [
        {"role": "user", "content": "Look it up."},
        {"role": "assistant", "content": assistant},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "found"}]},
    ], "tools": [{"name": "lookup", "input_schema": {"type": "object"}}]}


def responses_body(with_reasoning: bool) -> dict[str, object]:
    items: list[dict[str, object]] = [{"type": "message", "role": "user", "content": "Look it up."}]
    if with_reasoning:
        items.append({"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": THINKING}]})
    items += [{"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
              {"type": "function_call_output", "call_id": "call_1", "output": "found"}]
    return {"model": "gpt-5", "input": items, "max_output_tokens": 100}


def prompt_tokens(endpoint: str, data: dict[str, object]) -> int:
    body = dialects.get_dialect(endpoint).parse(data)
    return sizing.worst_case(body, "claude-sonnet-4-5" if endpoint == MESSAGES else "gpt-5").prompt_tokens


def test_thinking_blocks_dropped_by_translation_still_count_toward_the_hold() -> None:
    without, with_thinking = prompt_tokens(MESSAGES, messages_body(False)), prompt_tokens(MESSAGES, messages_body(True))
    assert with_thinking - without >= 1000  # the thinking text's tokens, not a rounding difference
    chat = dialects.chat_form(dialects.get_dialect(MESSAGES).parse(messages_body(True)))
    assert THINKING not in str(chat.data["messages"])  # still not sent to a chat provider


def test_reasoning_items_dropped_by_translation_still_count_toward_the_hold() -> None:
    without, with_reasoning = prompt_tokens(RESPONSES, responses_body(False)), prompt_tokens(RESPONSES, responses_body(True))
    assert with_reasoning - without >= 1000
    chat = dialects.chat_form(dialects.get_dialect(RESPONSES).parse(responses_body(True)))
    assert THINKING not in str(chat.data["messages"])
