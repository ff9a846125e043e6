"""Property-based fuzz of /v1: whatever the body, the answer is never a 5xx, every error is the OpenAI envelope,
and every authenticated request leaves exactly one ledger row.

Bodies mix valid values with hostile ones at every key (wrong types, huge and negative ints, floats, nested
junk, lone surrogates as raw JSON escapes, NUL, empty lists, deep nesting), plus raw bytes that are not JSON.
They go in process through the lean ASGI handler that serves /v1 in production, to the built-in demo model,
with a budget on the tenant so the gate sizes every admitted request.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import Budget, Price, UsageRecord
from proxy import routing
from proxy.services import ensure_demo_route

from ..conftest import Party
from .v1_client import CHAT, COMPLETIONS, EMBEDDINGS, AsgiReply, asgi_call

# Derandomized, so a run is repeatable; no example database is written into the repository.
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])

KEYS = ["model", "messages", "role", "content", "type", "text", "image_url", "url", "detail", "input_audio",
        "tools", "function", "name", "parameters", "arguments", "tool_calls", "response_format", "json_schema",
        "prompt", "input", "max_tokens", "n", "best_of", "stream", "stream_options", "include_usage", "stop"]
SPECIAL_STRINGS = ["", " ", "\x00", "demo\x00", "\ud800", "a\udfffb", "\ud83d\ude00", "user", "assistant", "tool",
                   "text", "image_url", "input_audio", "function", "json_schema", "json_object", "low", "max", "demo",
                   "\u202e", "\ufeff", "<script>", "\r\nX-Injected: 1", "9" * 30]
HUGE_INTS = [0, -1, 2**31 - 1, 2**31, 2**53 + 1, 2**63, -(2**63), 2**64, 10**30, 10**4000]

# Every code point, lone surrogates included: json.dumps writes those as \udXXX escapes.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=False, allow_infinity=False), any_text, st.sampled_from(SPECIAL_STRINGS),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | any_text, inner, max_size=4),
    max_leaves=10,
)


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def body_strategies(hostile: bool) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """Request bodies per endpoint: all valid, or (hostile) with anything at all at any key, often."""

    def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        if not hostile:
            return valid
        return st.one_of(valid, valid, junk, st.sampled_from([deep(50), {"a": deep(200)}, [], {}, None]))

    text = either(any_text) if hostile else st.text(st.characters(codec="utf-8"), max_size=12)
    text_part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
    image_part = st.fixed_dictionaries({"type": st.just("image_url"), "image_url": either(
        st.fixed_dictionaries({"url": either(st.just("https://example.com/a.png"))},
                              optional={"detail": either(st.sampled_from(["low", "high", "auto"]))}))})
    audio_part = st.fixed_dictionaries({"type": st.just("input_audio"), "input_audio": either(
        st.fixed_dictionaries({"data": st.just("AAAA"), "format": st.just("wav")}))})
    other_part = st.fixed_dictionaries({"type": either(st.just("file"))}, optional={"file": junk})
    part = either(text_part | image_part | audio_part | other_part)
    tool_call = either(st.fixed_dictionaries({
        "id": st.just("call_1"), "type": either(st.just("function")),
        "function": either(st.fixed_dictionaries({"name": either(st.just("f")), "arguments": either(st.just("{}"))})),
    }))
    message = either(st.fixed_dictionaries(
        {"role": either(st.sampled_from(["system", "developer", "user", "assistant", "tool"])),
         "content": either(text | st.lists(part, min_size=1, max_size=3))},
        optional={"name": text, "tool_calls": either(st.lists(tool_call, min_size=1, max_size=2)), "tool_call_id": text},
    ))
    function = st.fixed_dictionaries({"name": either(st.just("lookup"))},
                                     optional={"parameters": either(st.just({"type": "object", "properties": {}}))})
    tool = either(st.fixed_dictionaries({"type": either(st.just("function")), "function": either(function)}))
    response_format = either(st.sampled_from([{"type": "text"}, {"type": "json_object"},
                                              {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}]))
    tokens = st.integers(1, 64) | (st.sampled_from(HUGE_INTS) if hostile else st.just(1_000_000))
    token_ids = st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=5)
    text_input = either(text | st.lists(text, min_size=1, max_size=3) | token_ids
                        | st.lists(token_ids, min_size=1, max_size=3))
    stream = st.sampled_from([{}, {"stream": False}, {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}])
    common = {"max_tokens": either(tokens), "n": either(st.integers(1, 1)), "temperature": either(st.floats(0, 2)),
              "top_p": either(st.floats(0, 1)), "stop": either(text | st.lists(text, max_size=2)), "user": text}
    if hostile:
        common.update({"stream": either(st.booleans()), "max_completion_tokens": either(tokens), "n": either(st.integers(1, 3)),
                       "stream_options": either(st.fixed_dictionaries({"include_usage": either(st.booleans())})),
                       "metadata": junk})

    def with_stream(bodies: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
        return bodies if hostile else st.builds(lambda body, extra: {**body, **extra}, bodies, stream)

    return {
        CHAT: with_stream(st.fixed_dictionaries(
            {"model": either(st.just("demo")), "messages": either(st.lists(message, min_size=1, max_size=3))},
            optional={**common, "tools": either(st.lists(tool, max_size=2)), "functions": either(st.lists(function, max_size=2)),
                      "response_format": response_format, **({"tool_choice": junk} if hostile else {})})),
        COMPLETIONS: with_stream(st.fixed_dictionaries(
            {"model": either(st.just("demo")), "prompt": text_input},
            optional={**common, "best_of": either(st.integers(1, 3)), "suffix": either(text)})),
        EMBEDDINGS: st.fixed_dictionaries({"model": either(st.just("demo")), "input": text_input},
                                          optional={"encoding_format": either(st.just("float")), "user": text}),
    }


DELETE = object()  # a fault that removes the key (or list item) instead of replacing its value
FAULTS = [*SPECIAL_STRINGS, *HUGE_INTS, None, True, False, 1.5, -0.0, 1e308, [], {}, [[]], [None], {"": None}, deep(60), DELETE]
fault = st.sampled_from(FAULTS) | junk


def with_faults(body: dict[str, Any], faults: list[tuple[int, Any]]) -> dict[str, Any]:
    """The valid body with a few of its values, at any depth, replaced or removed.

    Each fault is a copy: a list or object from FAULTS put in as it is could be changed by the next fault (even made
    to hold itself), and the change would last into every later example.
    """
    for choice, value in faults:
        slots: list[tuple[Any, Any]] = []
        stack: list[Any] = [body]
        while stack:
            container = stack.pop()
            for key in (list(container) if isinstance(container, dict) else range(len(container))):
                slots.append((container, key))
                if isinstance(container[key], (dict, list)):
                    stack.append(container[key])
        container, key = slots[choice % len(slots)]
        if value is not DELETE:
            container[key] = copy.deepcopy(value)
        elif isinstance(container, dict):
            del container[key]
        else:
            container.pop(key)
    return body


CLEAN, HOSTILE = body_strategies(hostile=False), body_strategies(hostile=True)
# Half the bodies are valid but for one to three faults, so each check of the validation is reached on its own.
bodies = {url: st.one_of(CLEAN[url], HOSTILE[url], *[st.builds(with_faults, CLEAN[url], st.lists(
    st.tuples(st.integers(0, 10_000), fault), min_size=1, max_size=3))] * 2) for url in (CHAT, COMPLETIONS, EMBEDDINGS)}


def encode(body: Any, ascii_only: bool) -> bytes:
    """The body as a client could send it: escapes for everything (lone surrogates too), or raw UTF-8 where possible."""
    if ascii_only:
        return json.dumps(body).encode()
    # A lone surrogate cannot be UTF-8; "surrogatepass" writes the bytes a broken encoder would.
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


raw_bytes = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"{", b"}", b"NaN", b'{"model": 1e999}', b'{"model": "demo"}' * 2,
                     b"[" * 100_000, b'{"a":' * 5000, b"\xef\xbb\xbf{}", '{"model": "demo"}'.encode("utf-16"),
                     b'{"model": "demo", "messages": [{"role": "user", "content": "\\ud800"}]}']),
    st.tuples(st.sampled_from([b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}',
                               b'{"model": "demo", "prompt": [1, 2, 3]}', b'{"model": "demo", "input": ["a"]}']),
              st.integers(0, 70), st.binary(max_size=3)).map(lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:]),
)


@pytest.fixture
def gated(alice: Party) -> Party:
    ensure_demo_route()
    routing.invalidate()
    # A budget with room for anything, so every admitted request is sized by the gate and held, then settled.
    Price.objects.create(model="demo", input_per_million=Decimal("0.01"), output_per_million=Decimal("0.01"))
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1000000"), period="month")
    return alice


def send(party: Party | None, url: str, body: bytes, method: str = "POST") -> AsgiReply:
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(party.auth if party else {})}
    return async_to_sync(asgi_call)(url, method=method, chunks=[body], headers=headers)


def assert_well_formed(reply: AsgiReply) -> None:
    assert reply.status < 500, reply.content
    if reply.status == 200:
        if reply.headers["content-type"] == "text/event-stream":
            assert reply.content.endswith(b"data: [DONE]\n\n"), reply.content
        else:
            assert isinstance(json.loads(reply.content), dict)
        return
    assert reply.headers["content-type"] == "application/json", reply.content
    envelope = json.loads(reply.content)
    assert list(envelope) == ["error"] and set(envelope["error"]) == {"message", "type", "param", "code"}, envelope
    error = envelope["error"]
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)


def check(party: Party | None, url: str, body: bytes, method: str = "POST") -> AsgiReply:
    before = UsageRecord.objects.count()
    reply = send(party, url, body, method)
    assert_well_formed(reply)
    # Every authenticated request leaves exactly one row, whatever its answer; anonymous ones leave none.
    assert UsageRecord.objects.count() == before + (1 if party else 0), (reply.status, reply.content)
    return reply


@pytest.mark.parametrize(("url", "examples"), [(CHAT, 1200), (COMPLETIONS, 600), (EMBEDDINGS, 500)],
                         ids=["chat", "completions", "embeddings"])
def test_fuzzed_bodies_never_fail_the_gateway(gated: Party, url: str, examples: int) -> None:
    statuses: list[int] = []

    @settings(FUZZ, max_examples=examples)
    @given(body=bodies[url], ascii_only=st.booleans())
    def run(body: dict[str, Any], ascii_only: bool) -> None:
        statuses.append(check(gated, url, encode(body, ascii_only)).status)

    run()
    # The mix reaches both sides: valid bodies answered by the model, and refused ones.
    assert statuses.count(200) > examples // 20 and statuses.count(400) > examples // 5, sorted(set(statuses))


@settings(FUZZ, max_examples=500)
@given(url=st.sampled_from([CHAT, COMPLETIONS, EMBEDDINGS]), body=raw_bytes, authenticated=st.integers(0, 9),
       method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]))
def test_raw_bytes_never_fail_the_gateway(gated: Party, url: str, body: bytes, authenticated: int, method: str) -> None:
    reply = check(gated if authenticated else None, url, body, method)
    assert reply.status != 200 or method == "POST"


@settings(FUZZ, max_examples=300)
@given(tail=st.text(st.characters(codec="utf-8"), max_size=20), method=st.sampled_from(["GET", "POST", "DELETE"]))
def test_any_v1_path_answers_the_envelope(gated: Party, tail: str, method: str) -> None:
    path = "/v1/" + tail
    reply = async_to_sync(asgi_call)(path, method=method, headers=gated.auth)
    assert_well_formed(reply)


def test_faults_never_change_the_shared_fault_values() -> None:
    before = copy.deepcopy(FAULTS[:-1])
    for fault in FAULTS[:-1]:
        # Put the fault in, then a second fault inside whatever now sits there: the shared value must stay as it was.
        with_faults(with_faults({"x": 1}, [(0, fault)]), [(1, "changed"), (1, DELETE)])
    assert FAULTS[:-1] == before
