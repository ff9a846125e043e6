"""A Messages request as a Chat Completions request, and a chat.completion as an Anthropic message.

The chat form is also what sizes the request for the budget gate (proxy/sizing.py), even when an Anthropic
deployment gets the original body: so it never raises (the body was validated by messages.py), and a block it
cannot translate is kept as its JSON text, which the gate counts. What chat cannot carry (Anthropic's server tools,
files by id, newer block types) is noted as a refusal on the chat form (``state["refusal"]``), a 400 naming it that
proxy/upstream.py raises only when a translated route is chosen: an Anthropic deployment takes it as it is.
"""

from __future__ import annotations

import json
import math
import secrets
from typing import Any

from billing import tokens

from ..errors import GatewayError
from ..providers.base import CHAT, ApiRequest, Completion, JSONDict, Usage

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
TOOL_CHOICES: dict[str, Any] = {"auto": "auto", "any": "required", "none": "none"}
# Estimating usage the provider did not report happens on the event loop for a whole answer (Dialect.completion
# is synchronous): only with the tokenizer already loaded and for this much text at most; beyond, bytes / 4.
ESTIMATE_ON_LOOP_BYTES = 64 * 1024


NATIVE_ONLY = "is served only by an Anthropic deployment, and this model's route translates to Chat Completions"


def as_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Refusals:
    """The first thing found that chat cannot carry, as the 400 to answer if the request is translated."""

    def __init__(self) -> None:
        self.first: GatewayError | None = None
        # Blocks the chat form leaves out that an Anthropic deployment still bills as input (the thinking of a turn
        # in a tool-use loop): the budget gate counts them (proxy/sizing.py), so a native route's hold covers them.
        self.uncounted: list[JSONDict] = []

    def note(self, what: str, param: str) -> None:
        if self.first is None:
            self.first = GatewayError(f"{what} {NATIVE_ONLY}.", param=param, code="unsupported_on_route")


def image_part(source: JSONDict, refusals: Refusals, at: str) -> JSONDict:
    if source.get("type") == "base64":
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif source.get("type") == "url":
        url = source["url"]
    else:  # a Files API id, which only Anthropic can resolve
        refusals.note("An image sent by file id", f"{at}.source")
        return {"type": "text", "text": as_json({"type": "image", "source": source})}
    return {"type": "image_url", "image_url": {"url": url}}


def document_part(block: JSONDict, refusals: Refusals, at: str) -> JSONDict:
    source = block["source"]
    kind = source.get("type")
    if kind == "base64":
        name = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        data_url = f"data:{source['media_type']};base64,{source['data']}"
        return {"type": "file", "file": {"filename": name, "file_data": data_url}}
    if kind == "text":
        return {"type": "text", "text": source["data"]}
    if kind == "content" and isinstance(source.get("content"), str):
        return {"type": "text", "text": source["content"]}
    if kind == "content":
        texts = [item["text"] for item in source["content"] if item.get("type") == "text"]
        if len(texts) == len(source["content"]):
            return {"type": "text", "text": "\n".join(texts)}
    refusals.note(f"A document with a {kind} source", f"{at}.source")
    return {"type": "text", "text": as_json(block)}


def part_of(block: JSONDict, refusals: Refusals, at: str) -> JSONDict | None:
    """The chat content part for a user block; None for a block with no chat meaning (thinking)."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        return image_part(block["source"], refusals, at)
    if kind == "document":
        return document_part(block, refusals, at)
    if kind in ("thinking", "redacted_thinking"):
        return None
    if kind == "search_result" and isinstance(block.get("content"), list):
        texts = [item.get("text") for item in block["content"] if isinstance(item, dict)]
        if all(isinstance(text, str) for text in texts):
            return {"type": "text", "text": "\n".join(texts)}
    refusals.note(f"A {kind} block", f"{at}.type")
    return {"type": "text", "text": as_json(block)}


def tool_result_text(block: JSONDict, images: list[JSONDict], refusals: Refusals, at: str) -> str:
    """The text of a tool result; its images go to ``images`` (a chat tool message holds text only)."""
    content = block.get("content")
    if isinstance(content, str):
        return content
    texts = []
    for i, item in enumerate(content or ()):
        part = part_of(item, refusals, f"{at}.content[{i}]")
        if part is None:
            continue
        if part["type"] == "text":
            texts.append(part["text"])
        else:
            images.append(part)
    return "\n".join(texts)


def user_messages(content: Any, refusals: Refusals, at: str) -> list[JSONDict]:
    """A user turn: its tool results first, as tool messages (chat wants them right after the tool calls)."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[JSONDict] = []
    parts: list[JSONDict] = []
    for i, block in enumerate(content):
        here = f"{at}[{i}]"
        if block.get("type") == "tool_result":
            images: list[JSONDict] = []
            text = tool_result_text(block, images, refusals, here)
            tool_messages.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
            parts.extend(images)
        elif (part := part_of(block, refusals, here)) is not None:
            parts.append(part)
    if parts or not tool_messages:
        single = len(parts) == 1 and parts[0]["type"] == "text"
        tool_messages.append({"role": "user", "content": parts[0]["text"] if single else (parts or "")})
    return tool_messages


def assistant_message(content: Any, refusals: Refusals, at: str) -> JSONDict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[JSONDict] = []
    for i, block in enumerate(content):
        kind = block.get("type")
        if kind == "tool_use":
            function = {"name": block["name"], "arguments": as_json(block["input"])}
            calls.append({"id": block["id"], "type": "function", "function": function})
        elif kind in ("thinking", "redacted_thinking"):
            refusals.uncounted.append(block)  # a provider other than Anthropic cannot verify or use Claude's signed thinking
        elif (part := part_of(block, refusals, f"{at}[{i}]")) is not None and part["type"] == "text":
            texts.append(part["text"])
    message: JSONDict = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def system_message(system: Any) -> JSONDict | None:
    text = system if isinstance(system, str) else "\n\n".join(block["text"] for block in system or ())
    return {"role": "system", "content": text} if text else None


def tools_of(data: JSONDict, refusals: Refusals) -> list[JSONDict]:
    tools = []
    for i, tool in enumerate(data.get("tools") or ()):
        if tool.get("type") not in (None, "custom"):  # Anthropic's server tools (web search, code execution)
            refusals.note(f"The {tool['type']} tool", f"tools[{i}].type")
            # Kept as it is, for the budget gate to count on an Anthropic deployment: the refusal above means
            # no translated route ever sends it.
            tools.append(tool)
            continue
        function: JSONDict = {"name": tool["name"], "parameters": tool["input_schema"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        tools.append({"type": "function", "function": function})
    return tools


def tool_choice_of(choice: JSONDict) -> Any:
    if choice["type"] == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return TOOL_CHOICES[choice["type"]]


def to_chat(body: ApiRequest) -> ApiRequest:
    """The Chat Completions request that asks the same as the Messages request."""
    data = body.data
    refusals = Refusals()
    messages: list[JSONDict] = []
    if (system := system_message(data.get("system"))) is not None:
        messages.append(system)
    for i, message in enumerate(data["messages"]):
        if message["role"] == "user":
            messages.extend(user_messages(message["content"], refusals, f"messages[{i}].content"))
        else:
            messages.append(assistant_message(message["content"], refusals, f"messages[{i}].content"))
    chat: JSONDict = {"model": data["model"], "messages": messages}
    if body.max_tokens is not None:
        chat["max_tokens"] = body.max_tokens
    for name in ("temperature", "top_p"):
        if data.get(name) is not None:
            chat[name] = data[name]
    if data.get("stop_sequences"):
        chat["stop"] = list(data["stop_sequences"])
    if tools := tools_of(data, refusals):
        chat["tools"] = tools
        choice = data.get("tool_choice")
        if choice is not None:
            chat["tool_choice"] = tool_choice_of(choice)
            if choice.get("disable_parallel_tool_use"):
                chat["parallel_tool_calls"] = False
    user = (data.get("metadata") or {}).get("user_id")
    if user:
        chat["user"] = user
    if body.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    translated = ApiRequest(endpoint=CHAT, model=body.model, data=chat, stream=body.stream, include_usage=body.stream,
                            max_tokens=body.max_tokens)
    if refusals.first is not None:
        translated.state["refusal"] = refusals.first
    if refusals.uncounted:
        translated.state["uncounted"] = refusals.uncounted
    return translated


def message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def usage_json(usage: Usage) -> JSONDict:
    """Anthropic's usage: input_tokens excludes the prompt tokens read from or written to the cache."""
    fresh = max(usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens, 0)
    return {"input_tokens": fresh, "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens, "cache_read_input_tokens": usage.cached_tokens}


def stop_reason(finish_reason: Any) -> str:
    return STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def tool_input(arguments: Any) -> JSONDict:
    """A tool call's JSON arguments as Anthropic's input object. Arguments that are not a JSON object (a model's
    malformed output) become {}: Anthropic's input must be an object, and the client's tool then reports what is
    missing, which the model can correct, where a made-up key would pass a schema check it should fail."""
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def tool_use_id(call: JSONDict) -> str:
    """The tool call's id, or a new one where the provider gave none (Anthropic's tool_result needs one)."""
    call_id = call.get("id")
    return call_id if isinstance(call_id, str) and call_id else "toolu_" + secrets.token_hex(12)


def content_blocks(message: JSONDict) -> list[JSONDict]:
    blocks: list[JSONDict] = []
    content = message.get("content")
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    if isinstance(content, str) and content:
        blocks.append({"type": "text", "text": content})
    if not blocks and isinstance(message.get("refusal"), str) and message["refusal"]:
        blocks.append({"type": "text", "text": message["refusal"]})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        blocks.append({"type": "tool_use", "id": tool_use_id(call), "name": str(function.get("name") or ""),
                       "input": tool_input(function.get("arguments"))})
    return blocks


def estimated(body: ApiRequest, text: str) -> Usage:
    """Usage for an answer whose provider reported none: tokenized when that is cheap here, else bytes / 4."""
    prompt_texts = body.prompt_texts()
    size = sum(tokens.utf8_length(t) for t in (*prompt_texts, text))
    if size <= ESTIMATE_ON_LOOP_BYTES and tokens.encoding_name(body.model) in tokens._loaded:
        prompt, completion = tokens.estimate(prompt_texts, text, model=body.model, chat=True)
        return Usage(prompt_tokens=prompt, completion_tokens=completion)
    prompt_bytes = sum(tokens.utf8_length(t) for t in prompt_texts)
    return Usage(prompt_tokens=math.ceil(prompt_bytes / 4), completion_tokens=math.ceil(tokens.utf8_length(text) / 4))


def completion(body: ApiRequest, answer: Completion) -> Completion:
    """The chat.completion as an Anthropic message; usage unchanged (None stays None: the ledger estimates it)."""
    payload = answer.payload
    choices = payload.get("choices") if isinstance(payload.get("choices"), list) else []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    usage = answer.usage if answer.usage is not None else estimated(body, answer.text)
    result = {"id": message_id(), "type": "message", "role": "assistant", "model": body.model,
              "content": content_blocks(message), "stop_reason": stop_reason(choice.get("finish_reason")),
              "stop_sequence": None, "usage": usage_json(usage)}
    return Completion(payload=result, usage=answer.usage, text=answer.text)
