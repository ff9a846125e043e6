"""Holds for models whose tokenizer Tollgate does not ship: the prompt is held at o200k's count times a margin."""

from __future__ import annotations

from billing import tokens
from proxy import sizing
from proxy.providers.base import CHAT, ApiRequest

PROSE = "The quarterly report shows steady growth across every region we serve. " * 40


def worst(model: str, text: str = PROSE) -> sizing.Worst:
    body = ApiRequest(endpoint=CHAT, model=model, data={"model": model, "messages": [{"role": "user", "content": text}]},
                      max_tokens=10)
    return sizing.worst_case(body, model)


def test_openai_models_are_held_at_their_own_count() -> None:
    for model in ("gpt-4o", "gpt-5-mini", "o3", "gpt-3.5-turbo", "text-embedding-3-small", "demo", "mock"):
        w = worst(model)
        assert w.held_prompt_tokens == w.prompt_tokens, model


def test_claude_is_held_at_half_again_its_o200k_count() -> None:
    for model in ("claude-sonnet-4-5", "anthropic.claude-3-5-haiku-20241022-v1:0", "us.anthropic.claude-opus-4-1"):
        w = worst(model)
        assert w.prompt_tokens == worst("gpt-4o").prompt_tokens  # the count itself is o200k's
        assert w.held_prompt_tokens == -(-w.prompt_tokens * 3 // 2), model


def test_other_families_are_held_a_third_above() -> None:
    for model in ("gemini-2.5-pro", "meta.llama3-70b-instruct-v1:0", "mistral-large-latest", "deepseek-chat"):
        w = worst(model)
        assert w.held_prompt_tokens == -(-w.prompt_tokens * 4 // 3), model


def test_the_margin_never_holds_more_than_the_prompts_bytes() -> None:
    # Dense text (one token per byte or so) cannot be more tokens than bytes in any byte-level tokenizer.
    dense = "x" * 7 + "\u00e9" * 3
    w = worst("claude-sonnet-4-5", dense)
    most = tokens.utf8_length(dense) + tokens.PER_MESSAGE + tokens.REPLY_PRIMING
    assert w.prompt_tokens <= w.held_prompt_tokens <= most


def test_the_hold_prices_the_margin_but_the_count_stays_the_count() -> None:
    from decimal import Decimal

    from billing.models import Price
    from proxy.limits import worst_micros

    price = Price(model="claude-sonnet-4-5", input_per_million=Decimal("3"), output_per_million=Decimal("15"))
    w = worst("claude-sonnet-4-5")
    plain = sizing.Worst(prompt_tokens=w.prompt_tokens, completion_tokens=w.completion_tokens)
    assert worst_micros(price, w) > worst_micros(price, plain)
    assert worst_micros(price, w) == price.worst_micros(prompt_tokens=w.held_prompt_tokens,
                                                        completion_tokens=w.completion_tokens)
