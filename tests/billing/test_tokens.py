from __future__ import annotations

from billing import tokens


def test_models_map_to_the_encodings_openai_uses() -> None:
    assert tokens.encoding_name("gpt-4o-mini") == "o200k_base"
    assert tokens.encoding_name("openai/gpt-4.1") == "o200k_base"
    assert tokens.encoding_name("gpt-4-turbo") == "cl100k_base"
    assert tokens.encoding_name("gpt-3.5-turbo") == "cl100k_base"
    assert tokens.encoding_name("claude-sonnet-4-5") == "o200k_base"  # non-OpenAI models: the newer encoding


def test_counts_match_tiktoken_without_any_download() -> None:
    # Token ids from OpenAI's tiktoken for "hello world": o200k [24912, 2375], cl100k [15339, 1917].
    assert tokens.encoding("o200k_base").encode("hello world") == [24912, 2375]
    assert tokens.encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert tokens.count(["hello world", "", "hello world"], model="gpt-4o") == 4


def test_estimate_adds_chat_framing_only_for_chat() -> None:
    texts = ["hello world"]
    assert tokens.estimate(texts, "hello world", model="gpt-4o", chat=False) == (2, 2)
    assert tokens.estimate(texts, "hello world", model="gpt-4o", chat=True) == (2 + 3 + 3, 2)
    assert tokens.estimate([], "", model="gpt-4o", chat=True) == (0, 0)
