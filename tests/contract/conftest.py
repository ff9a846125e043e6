"""The official SDKs against a live Tollgate, routed to the demo model and to fakellm, a third-party mock upstream.

fakellm (a pinned PyPI package) serves OpenAI chat completions at /v1/chat/completions and Anthropic messages at
/v1/messages, answering by rules. It runs in a thread of the test process behind a recorder that keeps every
request Tollgate sent it and every answer it gave, so a test can check what crossed the wire and compare the ledger
with the usage the upstream itself reported.

Routes: ``fake-chat`` is an OpenAI-compatible deployment on fakellm (Responses and Messages requests are translated
to chat for it); ``fake-claude`` is an Anthropic deployment on fakellm (Messages requests go natively, chat and
Responses requests are translated to Messages); ``demo`` is the built-in demo model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

# The shared checks assert too; have pytest explain their failures as it does in test files.
pytest.register_assert_rewrite("tests.contract.responses_checks", "tests.contract.messages_checks")

from billing.models import Price, UsageRecord
from proxy.services import ensure_demo_route

from ..conftest import Party, make_party
from ..factories import make_route
from ..live import serve_app

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER_TOOL_RESULT = '{"temperature_c": 18, "sky": "clear"}'
WEATHER_ANSWER = "It is 18 degrees and clear in Paris."
IMAGE_ANSWER = "I see a single red pixel."
# A 1x1 red PNG.
RED_PIXEL_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")

# First match wins. The tool's answer comes before the tool call, so a request that carries the tool's result gets
# the final answer and the one before it gets the call.
RULES = [
    # fakellm applies a rule's error status to whole answers only (it streams the content of any rule), so the refusal
    # is tried on requests that do not stream.
    {"name": "upstream-refuses", "when": {"messages_contain": "please refuse"},
     "respond": {"status": 400, "error": "The mock upstream refused this request."}},
    {"name": "weather-answer", "when": {"tool_result_contains": "temperature_c"},
     "respond": {"content": WEATHER_ANSWER}},
    {"name": "two-cities", "when": {"messages_contain": "paris and rome"},
     "respond": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                {"name": "get_weather", "arguments": {"city": "Rome"}}]}},
    {"name": "weather-call", "when": {"tools_include": "get_weather"},
     "respond": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}},
    # Anthropic has no JSON mode: Tollgate asks for a JSON format as a tool named after the schema, forced.
    {"name": "structured-tool", "when": {"tools_include": "Weather"},
     "respond": {"tool_calls": [{"name": "Weather", "arguments": {"city": "Paris", "temperature_c": 18}}]}},
    {"name": "structured", "when": {"messages_contain": "as json"},
     "respond": {"content": '{"city": "Paris", "temperature_c": 18}'}},
    {"name": "picture", "when": {"messages_contain": "describe the picture"}, "respond": {"content": IMAGE_ANSWER}},
    {"name": "greeting", "when": {"messages_contain": "hello"},
     "respond": {"content": "Hi there, this is fakellm answering through the gateway."}},
]

# Prices with odd digits, so any rounding or mixed-up rate shows in the cost.
INPUT_PER_MILLION = Decimal("3.000001")
OUTPUT_PER_MILLION = Decimal("15.000007")
PER_IMAGE = Decimal("0.000123")


@dataclass
class Exchange:
    """One request Tollgate sent to fakellm and the answer it got."""

    path: str
    request_bytes: bytes = b""
    response_bytes: bytes = b""
    status: int = 0

    @property
    def request(self) -> Any:
        return json.loads(self.request_bytes)

    def events(self) -> list[dict[str, Any]]:
        """The JSON data of each SSE event of a streamed answer."""
        return [json.loads(line[5:]) for line in self.response_bytes.decode().splitlines()
                if line.startswith("data:") and line[5:].strip() != "[DONE]"]

    @property
    def streamed(self) -> bool:
        return self.response_bytes.lstrip().startswith((b"data:", b"event:"))

    def usage(self) -> tuple[int, int] | None:
        """(prompt tokens, completion tokens) as the upstream reported them; None when it reported none."""
        if self.path.endswith("/chat/completions"):
            frames = self.events() if self.streamed else [json.loads(self.response_bytes)]
            reported = [f["usage"] for f in frames if f.get("usage")]
            return (reported[-1]["prompt_tokens"], reported[-1]["completion_tokens"]) if reported else None
        if not self.streamed:
            usage = json.loads(self.response_bytes)["usage"]
            return usage["input_tokens"], usage["output_tokens"]
        prompt = completion = None
        for event in self.events():
            if event["type"] == "message_start":
                prompt = event["message"]["usage"]["input_tokens"]
                completion = event["message"]["usage"].get("output_tokens")
            elif event["type"] == "message_delta" and "usage" in event:
                completion = event["usage"]["output_tokens"]  # cumulative, as Anthropic counts
        return None if prompt is None else (prompt, completion or 0)


@dataclass
class Recorder:
    """ASGI middleware around fakellm's app that keeps every exchange."""

    app: Any
    exchanges: list[Exchange] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(path=scope["path"])
        self.exchanges.append(exchange)

        async def receive_and_keep() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                exchange.request_bytes += message.get("body", b"")
            return message

        async def keep_and_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
            elif message["type"] == "http.response.body":
                exchange.response_bytes += message.get("body", b"")
            await send(message)

        await self.app(scope, receive_and_keep, keep_and_send)


@dataclass
class FakeLLM:
    url: str
    recorder: Recorder

    def exchanges(self, path: str | None = None) -> list[Exchange]:
        return [e for e in self.recorder.exchanges if path is None or e.path == path]

    def reset(self) -> None:
        from fakellm import _state

        _state.reset()  # fakellm remembers tool results per conversation; every test starts a new one
        self.recorder.exchanges.clear()


@pytest.fixture(scope="session")
def fakellm_server() -> Iterator[FakeLLM]:
    from fakellm import server
    from fakellm.config import Config

    server._config = Config(rules=RULES)  # what `fakellm serve --config` would load from YAML
    recorder = Recorder(server.app)
    with serve_app(recorder) as url:
        yield FakeLLM(url=url, recorder=recorder)


@pytest.fixture
def fakellm(fakellm_server: FakeLLM) -> FakeLLM:
    fakellm_server.reset()
    return fakellm_server


@pytest.fixture
def alice(transactional_db: None) -> Party:
    return make_party("alice")


@pytest.fixture
def routes(transactional_db: None, fakellm: FakeLLM) -> None:
    ensure_demo_route()
    make_route("fake-chat", upstream_model="fakellm-gpt", base_url=f"{fakellm.url}/v1", provider_name="fakellm-openai")
    make_route("fake-claude", upstream_model="fakellm-claude", base_url=fakellm.url, kind="anthropic",
               provider_name="fakellm-anthropic")
    for model in ("demo", "fake-chat", "fake-claude"):
        Price.objects.create(model=model, input_per_million=INPUT_PER_MILLION, output_per_million=OUTPUT_PER_MILLION,
                             per_image=PER_IMAGE)


def expected_cost_picos(prompt_tokens: int, completion_tokens: int, images: int = 0) -> int:
    """The exact cost at the test prices, worked out here rather than by the code under test."""
    dollars = (prompt_tokens * INPUT_PER_MILLION + completion_tokens * OUTPUT_PER_MILLION) / 10**6 + images * PER_IMAGE
    picos = dollars * 10**12
    assert picos == picos.to_integral_value()
    return int(picos)


@dataclass(frozen=True, order=True)
class Row:
    """What one request's ledger row must say."""

    endpoint: str
    model: str
    stream: bool
    usage: tuple[int, int]  # prompt and completion tokens
    source: str = "provider"
    images: int = 0


def ledger_rows(party: Party, count: int) -> list[UsageRecord]:
    """The party's rows once ``count`` are written (or 5 s passed), and a moment more for a stray extra one."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and UsageRecord.objects.filter(tenant=party.tenant).count() < count:
        time.sleep(0.02)
    time.sleep(0.1)  # a stray second row for one request would land about now
    return list(UsageRecord.objects.filter(tenant=party.tenant))


def check_ledger(party: Party, *expected: Row) -> None:
    """One row per request, each as expected, every cost exact for its own tokens. Rows are compared in any order: a
    stream's row is written just after its last event, so two requests in a row may land either way round."""
    rows = ledger_rows(party, len(expected))
    got = [Row(r.endpoint, r.public_model, r.stream, (r.prompt_tokens, r.completion_tokens), r.usage_source, r.images)
           for r in rows]
    assert sorted(got) == sorted(expected)
    for row in rows:
        assert (row.end_reason, row.status_code, row.unpriced) == ("complete", 200, False)
        assert row.cost_picos == expected_cost_picos(row.prompt_tokens, row.completion_tokens, images=row.images)


def tool_calls_of(exchange: Exchange) -> list[dict[str, Any]]:
    """The tool calls fakellm answered with, from either API, streamed or not."""
    if exchange.path.endswith("/chat/completions"):
        if not exchange.streamed:
            return [{"id": c["id"], "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                    for c in json.loads(exchange.response_bytes)["choices"][0]["message"]["tool_calls"]]
        calls: dict[int, dict[str, Any]] = {}
        for event in exchange.events():
            for delta in event["choices"][0]["delta"].get("tool_calls", []):
                call = calls.setdefault(delta["index"], {"id": delta.get("id"), "name": "", "arguments": ""})
                call["name"] += delta.get("function", {}).get("name", "")
                call["arguments"] += delta.get("function", {}).get("arguments", "")
        return [{**c, "arguments": json.loads(c["arguments"])} for c in calls.values()]
    if not exchange.streamed:
        return [{"id": b["id"], "name": b["name"], "arguments": b["input"]}
                for b in json.loads(exchange.response_bytes)["content"] if b["type"] == "tool_use"]
    blocks: dict[int, dict[str, Any]] = {}
    for event in exchange.events():
        if event["type"] == "content_block_start" and event["content_block"]["type"] == "tool_use":
            block = event["content_block"]
            blocks[event["index"]] = {"id": block["id"], "name": block["name"], "arguments": ""}
        elif event["type"] == "content_block_delta" and event["delta"]["type"] == "input_json_delta":
            blocks[event["index"]]["arguments"] += event["delta"]["partial_json"]
    return [{**b, "arguments": json.loads(b["arguments"])} for b in blocks.values()]


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def text_of(message: dict[str, Any]) -> str:
    """The text of a chat or Anthropic message, whether its content is a string or a list of text parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if part.get("type") in ("text", "input_text"))
