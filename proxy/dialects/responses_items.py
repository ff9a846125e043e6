"""Responses items and Chat Completions messages, both ways, and the Response object built from a chat answer.

Input (the stored conversation, then this request's items) becomes chat messages: message items keep their role
(developer as system, which every chat provider takes), function calls become an assistant message's tool_calls
(consecutive calls, and the text just before them, in one message), function call outputs become tool messages,
reasoning items are dropped (a chat provider cannot take them back). What chat cannot carry (built-in tools, files,
item references) is noted as a refusal on the chat form, raised only if a translated route is chosen: a provider that
speaks Responses natively takes the request as it is.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ..errors import GatewayError
from ..providers.base import CHAT, ApiRequest, JSONDict, Usage
from .responses_checks import refusal

NATIVE_ONLY = "needs a provider that speaks the Responses API; this model's route translates to Chat Completions"


class Translation:
    """The chat messages being built from items, and the first thing found that chat cannot carry."""

    def __init__(self) -> None:
        self.messages: list[JSONDict] = []
        self.refusal: GatewayError | None = None
        # Reasoning items the chat form leaves out that a native route sends back (and may bill as input): the
        # budget gate counts them (proxy/sizing.py), so a native route's hold covers them.
        self.uncounted: list[JSONDict] = []

    def refuse(self, what: str, param: str, stand_in: Any = None) -> None:
        if self.refusal is None:
            self.refusal = refusal(f"{what} {NATIVE_ONLY}.", param)
        if stand_in is not None:  # counted by the budget gate when a native route serves it
            self.messages.append({"role": "user", "content": json.dumps(stand_in, ensure_ascii=False)})

    def add_item(self, item: JSONDict, at: str) -> None:
        kind = item.get("type") or "message"
        if kind == "message":
            self.add_message(item, at)
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = self.messages[-1] if self.messages else None
            if last is not None and last["role"] == "assistant":  # the text just before, or the calls before
                last.setdefault("tool_calls", []).append(call)
            else:
                self.messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item["output"]
            if isinstance(output, list):
                output = self.text_of(output, f"{at}.output")
            self.messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind == "reasoning":
            self.uncounted.append(item)
        else:
            self.refuse(f"The input item type '{kind}'", f"{at}.type", item)

    def add_message(self, item: JSONDict, at: str) -> None:
        role, content = item["role"], item["content"]
        if role == "developer":
            role = "system"
        if isinstance(content, list):
            content = self.parts(content, f"{at}.content") if role == "user" else self.text_of(content, f"{at}.content")
        self.messages.append({"role": role, "content": content})

    def parts(self, parts: list[JSONDict], at: str) -> list[JSONDict]:
        converted: list[JSONDict] = []
        for j, part in enumerate(parts):
            kind = part["type"]
            if kind in ("input_text", "output_text"):
                converted.append({"type": "text", "text": part["text"]})
            elif kind == "refusal":
                converted.append({"type": "text", "text": part["refusal"]})
            elif kind == "input_image" and part.get("image_url") is not None:
                image = {"url": part["image_url"]}
                if part.get("detail") is not None:
                    image["detail"] = part["detail"]
                converted.append({"type": "image_url", "image_url": image})
            else:
                what = "An image given by file_id" if kind == "input_image" else f"The content part type '{kind}'"
                self.refuse(what, f"{at}[{j}]", part)
        return converted

    def text_of(self, parts: list[JSONDict], at: str) -> str:
        texts = []
        for j, part in enumerate(parts):
            text = part.get("text") if part["type"] in ("input_text", "output_text") else part.get("refusal")
            if isinstance(text, str):
                texts.append(text)
            else:
                self.refuse(f"The content part type '{part['type']}' here", f"{at}[{j}]", part)
        return "\n".join(texts)


def input_items(data: JSONDict) -> list[JSONDict]:
    """This request's input as a list of items (a string is one user message)."""
    value = data["input"]
    return [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else list(value)


def to_chat(body: ApiRequest) -> ApiRequest:
    """The CHAT form of a Responses request. Never raises: what chat cannot carry is noted in state["refusal"]."""
    data, translation = body.data, Translation()
    if isinstance(data.get("instructions"), str):
        translation.messages.append({"role": "system", "content": data["instructions"]})
    for item in body.state.get("history") or ():
        try:
            translation.add_item(item, "previous_response_id")
        except (KeyError, TypeError, AttributeError):  # stored by a native provider in a shape chat cannot take
            translation.refuse("An earlier turn's item", "previous_response_id", item)
    for i, item in enumerate(input_items(data)):
        translation.add_item(item, f"input[{i}]")
    chat: JSONDict = {"model": body.model, "messages": translation.messages}
    tools = chat_tools(data.get("tools") or [], translation)
    choice = data.get("tool_choice")
    if isinstance(choice, dict) and choice["type"] == "allowed_tools":
        allowed = {tool.get("name") for tool in choice["tools"] if tool.get("type") == "function"}
        tools, choice = [tool for tool in tools if tool["function"]["name"] in allowed], choice["mode"]
    if choice is not None:
        choice = chat_tool_choice(choice, translation)
    if tools:  # chat providers refuse tool_choice and parallel_tool_calls without tools
        chat["tools"] = tools
        if isinstance(data.get("parallel_tool_calls"), bool):
            chat["parallel_tool_calls"] = data["parallel_tool_calls"]
        if choice is not None:
            chat["tool_choice"] = choice
    response_format = chat_response_format(data)
    if response_format is not None:
        chat["response_format"] = response_format
    if body.max_tokens is not None:
        chat["max_completion_tokens"] = body.max_tokens
    for name in ("temperature", "top_p", "user"):
        if data.get(name) is not None:
            chat[name] = data[name]
    if isinstance(data.get("reasoning"), dict) and isinstance(data["reasoning"].get("effort"), str):
        chat["reasoning_effort"] = data["reasoning"]["effort"]
    if body.stream:
        chat["stream"], chat["stream_options"] = True, {"include_usage": True}
    form = ApiRequest(endpoint=CHAT, model=body.model, data=chat, stream=body.stream, include_usage=body.stream,
                      max_tokens=body.max_tokens)
    if translation.refusal is not None:
        form.state["refusal"] = translation.refusal
    if translation.uncounted:
        form.state["uncounted"] = translation.uncounted
    return form


def chat_tools(tools: list[JSONDict], translation: Translation) -> list[JSONDict]:
    converted = []
    for i, tool in enumerate(tools):
        if tool["type"] != "function":
            translation.refuse(f"The tool type '{tool['type']}'", f"tools[{i}].type")
            continue
        function = {name: tool[name] for name in ("name", "description", "parameters", "strict")
                    if tool.get(name) is not None}
        converted.append({"type": "function", "function": function})
    return converted


def chat_tool_choice(choice: Any, translation: Translation) -> Any:
    if isinstance(choice, str):
        return choice
    if choice["type"] == "function":
        return {"type": "function", "function": {"name": choice["name"]}}
    translation.refuse(f"The tool choice '{choice['type']}'", "tool_choice")
    return "auto"


def chat_response_format(data: JSONDict) -> JSONDict | None:
    format_ = (data.get("text") or {}).get("format")
    if not isinstance(format_, dict) or format_["type"] == "text":
        return None
    if format_["type"] == "json_object":
        return {"type": "json_object"}
    schema = {name: format_[name] for name in ("name", "description", "schema", "strict") if format_.get(name) is not None}
    return {"type": "json_schema", "json_schema": schema}


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def message_item(text: str, *, refusal_text: str | None = None, status: str = "completed",
                 id_: str | None = None) -> JSONDict:
    content: list[JSONDict] = []
    if text or refusal_text is None:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal_text is not None:
        content.append({"type": "refusal", "refusal": refusal_text})
    return {"id": id_ or item_id("msg"), "type": "message", "role": "assistant", "status": status, "content": content}


def call_item(call_id: str, name: str, arguments: str, *, status: str = "completed", id_: str | None = None) -> JSONDict:
    return {"id": id_ or item_id("fc"), "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def reasoning_item(text: str, *, id_: str | None = None) -> JSONDict:
    return {"id": id_ or item_id("rs"), "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def reasoning_of(holder: JSONDict) -> str | None:
    """The reasoning text some chat providers add to a message or delta (DeepSeek, vLLM, OpenRouter)."""
    for name in ("reasoning_content", "reasoning"):
        if isinstance(holder.get(name), str):
            return str(holder[name])
    return None


def output_items(message: JSONDict) -> list[JSONDict]:
    """A chat answer's message as Responses output items: reasoning, then the message, then its function calls."""
    items = []
    if (reasoning := reasoning_of(message)) is not None and reasoning:
        items.append(reasoning_item(reasoning))
    content, refused = message.get("content"), message.get("refusal")
    calls = [call for call in message.get("tool_calls") or () if isinstance(call, dict)]
    if isinstance(content, str) and content or isinstance(refused, str) or not calls:
        items.append(message_item(content if isinstance(content, str) else "",
                                  refusal_text=refused if isinstance(refused, str) else None))
    for call in calls:
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        items.append(call_item(str(call.get("id") or item_id("call")), str(function.get("name") or ""),
                               str(function.get("arguments") or "")))
    return items


def status_of(finish_reason: Any) -> tuple[str, JSONDict | None]:
    """The Response status for a chat finish reason, with its incomplete_details."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def usage_json(usage: Usage, reasoning_tokens: int = 0) -> JSONDict:
    details = {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens}
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": details,
            "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def echoed_tools(data: JSONDict) -> list[JSONDict]:
    tools = []
    for tool in data.get("tools") or ():
        if tool["type"] == "function":
            tool = {"type": "function", "name": tool["name"], "description": tool.get("description"),
                    "parameters": tool.get("parameters"), "strict": tool.get("strict", True)}
        tools.append(tool)
    return tools


def response_object(body: ApiRequest, *, status: str, output: list[JSONDict], usage: JSONDict | None = None,
                    incomplete: JSONDict | None = None, error: JSONDict | None = None) -> JSONDict:
    """The Response object for this request, with the request's parameters echoed as OpenAI echoes them."""
    data, state = body.data, body.state
    text = data.get("text") if isinstance(data.get("text"), dict) else {}
    reasoning = data.get("reasoning") if isinstance(data.get("reasoning"), dict) else None
    return {
        "id": state.setdefault("response_id", item_id("resp")), "object": "response",
        "created_at": state.setdefault("created_at", int(time.time())), "status": status,
        "background": bool(data.get("background")), "error": error, "incomplete_details": incomplete,
        "instructions": data.get("instructions"), "max_output_tokens": data.get("max_output_tokens"),
        "max_tool_calls": data.get("max_tool_calls"), "model": body.model, "output": output,
        "parallel_tool_calls": data.get("parallel_tool_calls", True),
        "previous_response_id": data.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")} if reasoning else None,
        "store": state.get("store", data.get("store", True)) is not False,
        "temperature": data.get("temperature", 1.0), "text": {"format": {"type": "text"}, **text},
        "tool_choice": data.get("tool_choice", "auto"), "tools": echoed_tools(data),
        "top_p": data.get("top_p", 1.0), "truncation": data.get("truncation", "disabled"), "usage": usage,
        "user": data.get("user"), "metadata": data.get("metadata") or {},
    }
