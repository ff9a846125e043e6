"""OpenAI chat completions to and from AWS Bedrock's Converse API (pure translation, no I/O).

Request: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
Stream events: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ..errors import GatewayError
from .base import ApiRequest, Chunk, JSONDict, Target, Usage

FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter", "content_filtered": "content_filter",
    "model_context_window_exceeded": "length",
}
# Converse takes images as bytes (base64 in JSON) in these formats; it cannot fetch a URL.
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _image(part: JSONDict, param: str) -> JSONDict:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith("data:"):
        raise GatewayError("This model takes images as base64 data URLs (data:image/png;base64,...), not links.",
                           param=param)
    header, _, data = url[5:].partition(",")
    mime, _, encoding = header.partition(";")
    if encoding != "base64" or mime.lower() not in IMAGE_FORMATS or not data:
        raise GatewayError("Images must be base64 PNG, JPEG, GIF or WebP data URLs for this model.", param=param)
    return {"image": {"format": IMAGE_FORMATS[mime.lower()], "source": {"bytes": data}}}


def _content(content: Any, param: str, *, images: bool) -> list[JSONDict]:
    """Converse content blocks for OpenAI message content (text, and images where ``images``)."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise GatewayError("Message content must be a string or a list of parts.", param=param)
    blocks: list[JSONDict] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:  # Converse rejects empty text blocks
                blocks.append({"text": part["text"]})
        elif kind == "image_url" and images:
            blocks.append(_image(part, f"{param}[{j}].image_url"))
        else:
            raise GatewayError(f"Content parts of type {kind!r} are not supported here for this model.",
                               param=f"{param}[{j}]")
    return blocks


def _tool_uses(message: JSONDict, i: int) -> list[JSONDict]:
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise GatewayError("tool_calls must be a list.", param=f"messages[{i}].tool_calls")
    blocks = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        param = f"messages[{i}].tool_calls[{j}]"
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not call.get("id"):
            raise GatewayError("A tool call needs an id and a function name.", param=param)
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError):
            arguments = None
        if not isinstance(arguments, dict):
            raise GatewayError("Tool call arguments must be a JSON object.", param=f"{param}.function.arguments")
        blocks.append({"toolUse": {"toolUseId": str(call["id"]), "name": function["name"], "input": arguments}})
    return blocks


def messages_of(messages: Any) -> tuple[list[JSONDict], list[JSONDict]]:
    """The system blocks and the alternating user/assistant turns for OpenAI messages."""
    if not isinstance(messages, list) or not messages:
        raise GatewayError("messages must be a non-empty list.", param="messages")
    system: list[JSONDict] = []
    turns: list[JSONDict] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        param = f"messages[{i}].content"
        if role in ("system", "developer"):
            system.extend(_content(message.get("content"), param, images=False))
            continue
        if role == "user":
            blocks = _content(message.get("content"), param, images=True)
        elif role == "assistant":
            blocks = _content(message.get("content"), param, images=False) + _tool_uses(message, i)
        elif role == "tool":
            # A tool's answer goes back in a user turn, as a toolResult naming the call it answers.
            role, call_id = "user", message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise GatewayError("A tool message needs the tool_call_id it answers.",
                                   param=f"messages[{i}].tool_call_id")
            result = _content(message.get("content"), param, images=False) or [{"text": ""}]
            blocks = [{"toolResult": {"toolUseId": call_id, "content": result}}]
        else:
            raise GatewayError(f"Messages with role {role!r} are not supported for this model.",
                               param=f"messages[{i}].role")
        if not blocks:
            continue
        # Converse wants user and assistant turns to alternate: same-role neighbours become one turn.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def tool_config(data: JSONDict, turns: list[JSONDict]) -> JSONDict | None:
    """Converse's toolConfig for OpenAI tools and tool_choice; None when no tool is offered."""
    tools = data.get("tools") or []
    if data.get("functions") or data.get("function_call"):
        raise GatewayError("Use tools and tool_choice; functions are not supported for this model.", param="functions")
    if not isinstance(tools, list):
        raise GatewayError("tools must be a list.", param="tools")
    specs = []
    for k, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise GatewayError("Only function tools with a name are supported for this model.", param=f"tools[{k}]")
        spec: JSONDict = {"name": function["name"],
                          "inputSchema": {"json": function.get("parameters") or {"type": "object", "properties": {}}}}
        if isinstance(function.get("description"), str) and function["description"]:
            spec["description"] = function["description"]
        specs.append({"toolSpec": spec})
    if not specs:
        return None
    choice = data.get("tool_choice")
    used = any("toolUse" in b or "toolResult" in b for turn in turns for b in turn["content"])
    if choice == "none":
        # Converse has no "none": offer no tools, unless the conversation already used them (then it needs them).
        return {"tools": specs} if used else None
    config: JSONDict = {"tools": specs}
    if choice in (None, "auto"):
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
    else:
        raise GatewayError("tool_choice must be none, auto, required or a named function.", param="tool_choice")
    return config


def converse_request(body: ApiRequest) -> JSONDict:
    """The Converse body for an OpenAI chat request. Raises GatewayError naming what the model cannot take."""
    data = body.data
    if data.get("n") not in (None, 1):
        raise GatewayError("Only n=1 is supported for this model.", param="n")
    response_format = data.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise GatewayError("Structured output is not supported for this model.", param="response_format")
    system, turns = messages_of(data.get("messages"))
    payload: JSONDict = {"messages": turns}
    if system:
        payload["system"] = system
    inference: JSONDict = {}
    max_tokens = data.get("max_completion_tokens") or data.get("max_tokens") or body.max_tokens
    if max_tokens:
        inference["maxTokens"] = max_tokens
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP")):
        if data.get(ours) is not None:
            inference[theirs] = data[ours]
    stop = data.get("stop")
    if stop:
        inference["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if inference:
        payload["inferenceConfig"] = inference
    if (config := tool_config(data, turns)) is not None:
        payload["toolConfig"] = config
    return payload


def usage_of(raw: Any) -> Usage | None:
    """Usage for Converse's usage object: inputTokens leaves out the prompt-cache reads and writes, which are added."""
    if not isinstance(raw, dict):
        return None
    read, write = int(raw.get("cacheReadInputTokens") or 0), int(raw.get("cacheWriteInputTokens") or 0)
    return Usage(prompt_tokens=int(raw.get("inputTokens") or 0) + read + write,
                 completion_tokens=int(raw.get("outputTokens") or 0), cached_tokens=read, cache_write_tokens=write)


def openai_usage(usage: Usage) -> JSONDict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def completion_payload(target: Target, data: JSONDict) -> tuple[JSONDict, Usage | None, str]:
    """The chat.completion for a Converse answer, its usage and its text."""
    output = data.get("output") if isinstance(data.get("output"), dict) else {}
    message = output.get("message") if isinstance(output.get("message"), dict) else {}
    blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
    text = "".join(b["text"] for b in blocks if isinstance(b.get("text"), str))
    calls = [{"id": use.get("toolUseId", ""), "type": "function",
              "function": {"name": use.get("name", ""), "arguments": json.dumps(use.get("input") or {})}}
             for b in blocks if isinstance(use := b.get("toolUse"), dict)]
    answer: JSONDict = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        answer["tool_calls"] = calls
    usage = usage_of(data.get("usage"))
    payload: JSONDict = {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": target.public_model,
        "choices": [{"index": 0, "message": answer, "finish_reason": finish_reason(data.get("stopReason"))}],
    }
    if usage is not None:
        payload["usage"] = openai_usage(usage)
    return payload, usage, text


class StreamTranslator:
    """ConverseStream events in, OpenAI chat.completion.chunk payloads out; one per stream."""

    def __init__(self, target: Target) -> None:
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), target.public_model
        self.tools: dict[int, int] = {}  # Converse content block index -> OpenAI tool call index

    def _chunk(self, choices: list[JSONDict], **extra: Any) -> bytes:
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()

    def _delta(self, delta: JSONDict, text: str = "") -> Chunk:
        return Chunk(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]), text=text)

    def event(self, kind: str, data: JSONDict) -> list[Chunk]:
        """The chunks for one event (``kind`` is its :event-type header)."""
        if kind == "messageStart":
            return [self._delta({"role": "assistant", "content": ""})]
        if kind == "contentBlockStart":
            use = (data.get("start") or {}).get("toolUse")
            if not isinstance(use, dict):
                return []
            index = self.tools.setdefault(int(data.get("contentBlockIndex") or 0), len(self.tools))
            call = {"index": index, "id": use.get("toolUseId", ""), "type": "function",
                    "function": {"name": use.get("name", ""), "arguments": ""}}
            return [self._delta({"tool_calls": [call]})]
        if kind == "contentBlockDelta":
            delta = data.get("delta") or {}
            if isinstance(delta.get("text"), str) and delta["text"]:
                return [self._delta({"content": delta["text"]}, delta["text"])]
            arguments = (delta.get("toolUse") or {}).get("input")
            if isinstance(arguments, str) and arguments:
                index = self.tools.setdefault(int(data.get("contentBlockIndex") or 0), len(self.tools))
                call = {"index": index, "function": {"arguments": arguments}}
                return [self._delta({"tool_calls": [call]}, arguments)]
            return []  # reasoning and other deltas have no chat equivalent here
        if kind == "messageStop":
            choice = {"index": 0, "delta": {}, "finish_reason": finish_reason(data.get("stopReason"))}
            return [Chunk(self._chunk([choice]), finished=True)]
        if kind == "metadata" and (usage := usage_of(data.get("usage"))) is not None:
            return [Chunk(self._chunk([], usage=openai_usage(usage)), usage=usage, usage_only=True)]
        return []  # contentBlockStop and future event types
