"""The worst case of one request, for the budget gate: every billable input part, and the most it may generate.

``worst_case`` is a plain sync function that may tokenize up to TOLLGATE_TOKENIZE_MAX_BYTES of text, so the
gate calls it from a worker thread, never on the event loop. It never raises: the body was validated by
proxy/parsing.py, and whatever shape it still has that we do not know is counted as its JSON text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from billing import tokens

from . import dialects
from .providers.base import CHAT, COMPLETIONS, EMBEDDINGS, ApiRequest, JSONDict

# OpenAI's image rule (https://platform.openai.com/docs/guides/images-vision#calculating-costs): detail "low"
# costs the base tokens; "high" and "auto" scale the image to fit 2048x2048, then its shortest side to 768 px,
# and add tile tokens per 512 px tile. Without the image's dimensions we hold the most tiles that rule allows:
# the short side (<= 768) spans at most 2 tiles and the long side (<= 2048) at most 4, so 8 tiles
# (gpt-4o: 85 + 8 x 170 = 1445 tokens). Families priced differently, most specific prefix first:
MAX_TILES = 8
_TILE_RULES: tuple[tuple[str, int, int], ...] = (  # (model prefix, base tokens, tokens per tile)
    ("gpt-4o-mini", 2833, 5667),
    ("gpt-5", 70, 140),
    ("o1", 75, 150),
    ("o3", 75, 150),
    # Claude resizes images to about 1.15 megapixels, "approximately 1,600 tokens" whatever the detail
    # (https://docs.anthropic.com/en/docs/build-with-claude/vision#calculate-image-costs).
    ("claude", 1600, 0),
)
IMAGE_PARTS = ("image_url", "input_image")
# The most tokens of the system prompt Claude adds when tools are sent, over its models and tool_choice values
# (https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/overview#pricing: 530 for Claude 3 Opus, auto).
CLAUDE_TOOL_PROMPT = 530
_DEFAULT_TILE_RULE = (85, 170)  # gpt-4o, gpt-4.1, gpt-4.5, and models we know no rule for
# Smaller models count 32 px patches instead, at most 1536 per image, times a per-model multiplier (same page).
MAX_PATCHES = 1536
_PATCH_RULES: tuple[tuple[str, float], ...] = (
    ("gpt-5-mini", 1.62), ("gpt-5-nano", 2.46), ("gpt-4.1-mini", 1.62), ("gpt-4.1-nano", 2.46), ("o4-mini", 1.72),
)


@dataclass(frozen=True)
class Worst:
    """The most a request can be billed for, in tokens."""

    prompt_tokens: int
    completion_tokens: int
    images: int = 0  # image parts in the prompt, each held at its model's largest image
    # What a budget holds for the prompt: prompt_tokens times the margin for a tokenizer Tollgate does not ship
    # (billing/tokens.HOLD_MARGINS). Rate limits, the journal and count_tokens keep the count itself.
    held_prompt_tokens: int = -1  # -1: the same as prompt_tokens

    def __post_init__(self) -> None:
        if self.held_prompt_tokens < 0:
            object.__setattr__(self, "held_prompt_tokens", self.prompt_tokens)  # frozen: set once, here

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Parts:
    """What the prompt is made of: text for the tokenizer, and tokens known without it."""

    model: str
    texts: list[str] = field(default_factory=list)
    fixed: int = 0
    images: int = 0

    def text(self, value: object) -> None:
        self.texts.append(value if isinstance(value, str) else as_json(value))


def worst_case(body: ApiRequest, model: str) -> Worst:
    """Return the request's prompt tokens (every billable input part) and the completion tokens it may use at most."""
    if body.endpoint in dialects.DIALECTS:
        body = dialects.chat_form(body)  # a dialect request is held as the same chat request would be
    data = body.data if isinstance(body.data, dict) else {}
    parts = Parts(model=model)
    if body.endpoint == CHAT:
        add_chat(parts, data)
        for value in body.state.get("uncounted", ()):  # what a dialect's chat form left out (proxy/dialects)
            parts.text(value)
    elif body.endpoint == COMPLETIONS:
        add_text_input(parts, data.get("prompt"))
        if data.get("suffix") is not None:
            parts.text(data["suffix"])
    else:
        add_text_input(parts, data.get("input"))
    # One tokenizer call for the whole request, so the byte bound applies to all of its text together.
    prompt = tokens.count(parts.texts, model=model) + parts.fixed
    return Worst(prompt_tokens=prompt, completion_tokens=completion_tokens(body, data), images=parts.images,
                 held_prompt_tokens=held(prompt, parts, model))


def held(prompt: int, parts: Parts, model: str) -> int:
    """The prompt's tokens as a budget holds them: the count times the model family's margin, capped by the bytes."""
    numerator, denominator = tokens.hold_margin(model)
    if numerator == denominator:
        return prompt
    most = sum(tokens.utf8_length(text) for text in parts.texts) + parts.fixed
    return max(prompt, min(-(-prompt * numerator // denominator), most))


def count_images(body: ApiRequest) -> int:
    """The request's image parts, as worst_case counts them, without tokenizing anything: for per-image prices when
    no budget or token limit sized the request."""
    if body.endpoint in dialects.DIALECTS:
        body = dialects.chat_form(body)
    messages = body.data.get("messages") if body.endpoint == CHAT and isinstance(body.data, dict) else None
    if not isinstance(messages, list):
        return 0
    return sum(1 for message in messages if isinstance(message, dict) and isinstance(message.get("content"), list)
               for part in message["content"] if isinstance(part, dict) and part.get("type") in IMAGE_PARTS)


def completion_tokens(body: ApiRequest, data: JSONDict) -> int:
    if body.endpoint == EMBEDDINGS:
        return 0
    per_choice = (body.max_tokens or positive(data, "max_completion_tokens") or positive(data, "max_tokens")
                  or settings.TOLLGATE_DEFAULT_COMPLETION_TOKENS)
    choices = positive(data, "n") or 1
    if body.endpoint == COMPLETIONS:  # best_of generates that many server-side and bills them all
        choices = max(choices, positive(data, "best_of") or 1)
    return per_choice * choices


def add_chat(parts: Parts, data: JSONDict) -> None:
    messages = data.get("messages")
    if not isinstance(messages, list):
        messages = [] if messages is None else [messages]
    for message in messages:
        parts.fixed += tokens.PER_MESSAGE
        if isinstance(message, dict):
            add_message(parts, message)
        else:
            parts.text(message)
    parts.fixed += tokens.REPLY_PRIMING
    # Tool and function definitions, a forced tool and a JSON schema are sent to the model as text; their
    # compact JSON is at least as long as the TypeScript-like text OpenAI renders them into.
    for name in ("tools", "functions", "tool_choice", "function_call", "response_format"):
        if isinstance(data.get(name), (dict, list)):
            parts.text(data[name])
    # Claude bills a system prompt of its own whenever tools are sent (a JSON response format is sent as a tool too).
    if "claude" in parts.model and (data.get("tools") or isinstance(data.get("response_format"), dict)):
        parts.fixed += CLAUDE_TOOL_PROMPT


def add_message(parts: Parts, message: JSONDict) -> None:
    for key, value in message.items():
        if value is None or key == "role":  # the role is part of the per-message framing
            continue
        if key == "content":
            add_content(parts, value)
        elif key == "name":
            parts.text(value)
            parts.fixed += 1  # OpenAI's framing adds a token for a name
        elif key == "tool_calls" and isinstance(value, list):
            for call in value:
                function = call.get("function") if isinstance(call, dict) else None
                add_call(parts, function if isinstance(function, dict) else call)
        elif key == "function_call" and isinstance(value, dict):
            add_call(parts, value)
        else:  # tool_call_id, refusal, and fields we do not know: their text, to be safe
            parts.text(value)


def add_call(parts: Parts, call: object) -> None:
    if isinstance(call, dict) and set(call) <= {"name", "arguments"}:
        for value in call.values():
            parts.text(value)
    else:
        parts.text(call)


def add_content(parts: Parts, content: object) -> None:
    if isinstance(content, str):
        parts.texts.append(content)
        return
    if not isinstance(content, list):
        parts.text(content)
        return
    for part in content:
        if isinstance(part, dict):
            add_part(parts, part)
        else:
            parts.text(part)


def add_part(parts: Parts, part: JSONDict) -> None:
    kind = part.get("type")
    if kind in ("text", "input_text", "refusal"):
        parts.text(part.get("refusal" if kind == "refusal" else "text") or "")
    elif kind in IMAGE_PARTS:
        parts.images += 1
        parts.fixed += image_tokens(parts.model, detail_of(part))
    elif kind in ("input_audio", "file"):
        holder = part.get(kind)
        data = holder.get("data" if kind == "input_audio" else "file_data") if isinstance(holder, dict) else None
        if isinstance(data, str) and data:
            parts.fixed += inline_bytes(data)
        else:  # a file sent by id has no size here: its JSON text, an under-estimate we cannot avoid
            parts.text(part)
    else:
        parts.text(part)


def detail_of(part: JSONDict) -> object:
    image = part.get("image_url")
    return image.get("detail") if isinstance(image, dict) else part.get("detail")


def image_tokens(model: str, detail: object) -> int:
    """The most tokens one image can cost on the model, for a detail of "low", "high", "auto" or none."""
    bare = model.rsplit("/", 1)[-1]
    for prefix, multiplier in _PATCH_RULES:
        if bare.startswith(prefix):  # the patch rule has no cheaper "low": hold its cap either way
            return math.ceil(MAX_PATCHES * multiplier)
    base, tile = next(((b, t) for prefix, b, t in _TILE_RULES if bare.startswith(prefix)), _DEFAULT_TILE_RULE)
    return base if detail == "low" else base + MAX_TILES * tile


def inline_bytes(data: str) -> int:
    """A bound for audio or a file sent inline as base64: its decoded bytes. Audio is far fewer tokens than bytes
    (a few per second); so is a realistic PDF, but not a contrived one of many near-empty pages (OpenAI adds an
    image of every page), which this under-holds."""
    encoded = data.rpartition(",")[2] if data.startswith("data:") else data  # a data URL's payload follows the comma
    return math.ceil(len(encoded) * 3 / 4)


def add_text_input(parts: Parts, value: object) -> None:
    """A completions prompt or an embeddings input: a string, a token array, or a list of either."""
    for item in value if isinstance(value, list) and not is_token_array(value) else [value]:
        if item is None:
            continue
        if isinstance(item, str):
            parts.texts.append(item)
        elif isinstance(item, list) and is_token_array(item):
            parts.fixed += len(item)
        else:
            parts.text(item)


def is_token_array(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def positive(data: JSONDict, name: str) -> int | None:
    value = data.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def as_json(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError):  # a circular or absurdly deep value from a caller, not from JSON
        return ""
