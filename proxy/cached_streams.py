"""Between a stream and a whole answer, for the response cache: one entry serves both kinds of request.

``assemble`` turns the frames a streamed answer relayed into the answer a non-streamed request gets;
``replay`` turns a whole answer back into the SSE frames of a live stream: for chat, a role delta, the content
(and any tool calls), the finish_reason chunk, the usage chunk when the client asked for it, then [DONE].
"""

from __future__ import annotations

from typing import Any

import orjson

from . import sse
from .providers.base import CHAT, ApiRequest, JSONDict, Usage

KNOWN_DELTA = frozenset({"role", "content", "refusal", "tool_calls"})
FIRST_FIELDS = ("id", "created", "model", "system_fingerprint")


def usage_json(usage: Usage) -> JSONDict:
    data: JSONDict = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                      "total_tokens": usage.prompt_tokens + usage.completion_tokens}
    if usage.cached_tokens:
        data["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return data


def assemble(frames: list[bytes], body: ApiRequest, usage: Usage) -> bytes | None:
    """The whole answer the relayed frames make, as JSON; None when they hold something it cannot rebuild exactly
    (log probabilities, a legacy function call), which is then not cached."""
    head: JSONDict = {}
    choices: dict[int, JSONDict] = {}
    chat = body.endpoint == CHAT
    for frame in frames:
        if not frame.startswith(b"data: {"):
            continue  # [DONE]
        chunk = orjson.loads(frame[6:])
        if not head:
            head = {name: chunk[name] for name in FIRST_FIELDS if name in chunk}
        for choice in chunk.get("choices") or []:
            if choice.get("logprobs") is not None:
                return None
            state = choices.setdefault(choice.get("index", 0), {"role": "assistant", "content": [], "refusal": [],
                                                                 "tools": {}, "finish_reason": None})
            if not (add_delta(state, choice.get("delta") or {}) if chat else add_text(state, choice)):
                return None
            if choice.get("finish_reason") is not None:
                state["finish_reason"] = choice["finish_reason"]
    answer = {**head, "object": "chat.completion" if chat else "text_completion",
              "choices": [finished(index, state, chat) for index, state in sorted(choices.items())],
              "usage": usage_json(usage)}
    return orjson.dumps(answer)


def add_delta(state: JSONDict, delta: JSONDict) -> bool:
    if any(name not in KNOWN_DELTA and value is not None for name, value in delta.items()):
        return False
    if delta.get("role"):
        state["role"] = delta["role"]
    if delta.get("content"):
        state["content"].append(delta["content"])
    if delta.get("refusal"):
        state["refusal"].append(delta["refusal"])
    for call in delta.get("tool_calls") or []:
        kept = state["tools"].setdefault(call.get("index", 0), {"function": {"name": "", "arguments": ""}})
        for name in ("id", "type"):
            if call.get(name):
                kept[name] = call[name]
        function = call.get("function") or {}
        kept["function"]["name"] += function.get("name") or ""
        kept["function"]["arguments"] += function.get("arguments") or ""
    return True


def add_text(state: JSONDict, choice: JSONDict) -> bool:
    state["content"].append(choice.get("text") or "")
    return True


def finished(index: int, state: JSONDict, chat: bool) -> JSONDict:
    text = "".join(state["content"])
    if not chat:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": state["finish_reason"]}
    message: JSONDict = {"role": state["role"], "content": text if text or not state["tools"] else None}
    if state["refusal"]:
        message["refusal"] = "".join(state["refusal"])
    if state["tools"]:
        message["tool_calls"] = [{"id": call.get("id", ""), "type": call.get("type", "function"),
                                  "function": call["function"]} for _, call in sorted(state["tools"].items())]
    return {"index": index, "message": message, "logprobs": None, "finish_reason": state["finish_reason"]}


def replay(answer: JSONDict, body: ApiRequest) -> list[bytes]:
    """The SSE frames of a live stream of this whole answer, ending with [DONE]."""
    chat = body.endpoint == CHAT
    head = {name: answer[name] for name in FIRST_FIELDS if name in answer}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    chunks: list[JSONDict] = []
    for choice in answer.get("choices") or []:
        index = choice.get("index", 0)
        pieces = deltas(choice.get("message") or {}) if chat else [{"text": choice.get("text") or ""}]
        for piece in pieces:
            chunks.append({**head, "choices": [{"index": index, **piece, "logprobs": None, "finish_reason": None}]})
        end: JSONDict = {"delta": {}} if chat else {"text": ""}
        chunks.append({**head, "choices": [{"index": index, **end, "logprobs": None,
                                            "finish_reason": choice.get("finish_reason")}]})
    if body.include_usage and answer.get("usage") is not None:
        chunks.append({**head, "choices": [], "usage": answer["usage"]})
    return [sse.frame(orjson.dumps(chunk)) for chunk in chunks] + [sse.DONE]


def deltas(message: JSONDict) -> list[dict[str, Any]]:
    """The deltas a live stream sends for this message: the role first, then what it says."""
    pieces: list[dict[str, Any]] = [{"delta": {"role": message.get("role") or "assistant", "content": ""}}]
    if message.get("content"):
        pieces.append({"delta": {"content": message["content"]}})
    if message.get("refusal"):
        pieces.append({"delta": {"refusal": message["refusal"]}})
    calls = message.get("tool_calls") or []
    if calls:
        pieces.append({"delta": {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]}})
    return pieces
