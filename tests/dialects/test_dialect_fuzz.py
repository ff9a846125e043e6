"""Property-based fuzz of the Messages and Responses endpoints: whatever the body, id or query, never a 5xx; every
error in the endpoint's own envelope (Anthropic's on /v1/messages*, OpenAI's on /v1/responses*); every authenticated
POST to /v1/messages or /v1/responses leaves exactly one ledger row, and count_tokens and the stored-response endpoints
(which ask no provider) leave none.

Bodies are the documented request shapes with hostile values at any key (tests/proxy/test_fuzz.py's junk and faults),
sent in process through the lean ASGI handler that serves /v1 in production, to the built-in demo model, with a budget
on the tenant so the gate sizes every admitted request.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
from asgiref.sync import async_to_sync
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.models import Budget, Price, UsageRecord
from gateway_site.celery import app
from proxy import routing
from proxy.models import StoredResponse
from proxy.services import ensure_demo_route

from ..conftest import Party, make_party
from ..proxy.test_fuzz import FUZZ, HUGE_INTS, any_text, encode, fault, junk, raw_bytes, with_faults
from ..proxy.v1_client import AsgiReply, asgi_call
from .dialect_checks import COUNT_TOKENS, MESSAGES, RESPONSES, URLS, assert_anthropic_error, assert_openai_error, sse_events

# Committed as production commits, row by row: a write the database refuses must not poison a test transaction and
# take the next write (the ledger row) with it, which production would never see.
pytestmark = pytest.mark.django_db(transaction=True)
OBJECT = {"type": "object", "properties": {"q": {"type": "string"}}}


def strategies(hostile: bool) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """Request bodies per endpoint, from Anthropic's and OpenAI's API references: all valid, or with anything at any key."""

    def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(valid, valid, junk, st.sampled_from([[], {}, None, [[["x"]]]])) if hostile else valid

    text = either(any_text) if hostile else st.text(st.characters(codec="utf-8"), max_size=12)
    tokens = st.integers(1, 64) | (st.sampled_from(HUGE_INTS) if hostile else st.just(100_000))
    cache = either(st.just({"type": "ephemeral"}))
    text_block = st.fixed_dictionaries({"type": st.just("text"), "text": text}, optional={"cache_control": cache})
    source = either(st.sampled_from([{"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                                     {"type": "url", "url": "https://example.com/a.png"}]))
    blocks = [
        text_block,
        st.fixed_dictionaries({"type": st.just("image"), "source": source}),
        st.fixed_dictionaries({"type": st.just("tool_use"), "id": either(st.just("toolu_1")),
                               "name": either(st.just("lookup")), "input": either(st.just({"q": "x"}))}),
        st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": either(st.just("toolu_1"))},
                              optional={"content": either(text | st.lists(text_block, max_size=2)),
                                        "is_error": either(st.booleans())}),
        st.fixed_dictionaries({"type": st.just("thinking"), "thinking": text, "signature": either(st.just("c2ln"))}),
        st.fixed_dictionaries({"type": st.just("redacted_thinking"), "data": either(st.just("YWJj"))}),
        st.fixed_dictionaries({"type": st.just("document"), "source": either(st.just(
            {"type": "text", "media_type": "text/plain", "data": "A short document."}))}),
    ]
    block = either(st.one_of(*blocks))
    message = either(st.fixed_dictionaries({"role": either(st.sampled_from(["user", "assistant"])),
                                            "content": either(text | st.lists(block, min_size=1, max_size=3))}))
    tool = either(st.fixed_dictionaries({"name": either(st.just("lookup")), "input_schema": either(st.just(OBJECT))},
                                        optional={"description": text, "cache_control": cache}))
    counted = {
        "system": either(text | st.lists(text_block, max_size=2)), "tools": either(st.lists(tool, max_size=2)),
        "tool_choice": either(st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"},
                                               {"type": "tool", "name": "lookup"}])),
        "thinking": either(st.sampled_from([{"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"}])),
    }
    messages = {"model": either(st.just("demo")), "messages": either(st.lists(message, min_size=1, max_size=3))}

    part = either(st.one_of(
        st.fixed_dictionaries({"type": st.just("input_text"), "text": text}),
        st.fixed_dictionaries({"type": st.just("input_image")}, optional={
            "image_url": either(st.just("https://example.com/a.png")), "detail": either(st.sampled_from(["low", "high", "auto"]))}),
        st.fixed_dictionaries({"type": st.just("output_text"), "text": text}, optional={"annotations": either(st.just([]))}),
    ))
    item = either(st.one_of(
        st.fixed_dictionaries({"role": either(st.sampled_from(["user", "assistant", "system", "developer"])),
                               "content": either(text | st.lists(part, min_size=1, max_size=3))},
                              optional={"type": either(st.just("message"))}),
        st.fixed_dictionaries({"type": st.just("function_call"), "call_id": either(st.just("call_1")),
                               "name": either(st.just("lookup")), "arguments": either(st.just('{"q": "x"}'))}),
        st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": either(st.just("call_1")),
                               "output": text}),
        st.fixed_dictionaries({"type": st.just("reasoning"), "summary": either(st.just([]))}, optional={"id": st.just("rs_1")}),
    ))
    function = either(st.fixed_dictionaries(
        {"type": either(st.sampled_from(["function", "function", "web_search_preview", "file_search"])),
         "name": either(st.just("lookup"))},
        optional={"description": text, "parameters": either(st.just(OBJECT)), "strict": either(st.booleans())}))
    formats = either(st.sampled_from([{"format": {"type": "text"}}, {"format": {"type": "json_object"}},
                                      {"format": {"type": "json_schema", "name": "x", "schema": OBJECT, "strict": True}}]))
    return {
        URLS[MESSAGES]: st.fixed_dictionaries({**messages, "max_tokens": either(tokens)}, optional={
            **counted, "stop_sequences": either(st.lists(text, max_size=2)), "temperature": either(st.floats(0, 1)),
            "top_p": either(st.floats(0, 1)), "top_k": either(st.integers(1, 100)), "stream": either(st.booleans()),
            "metadata": either(st.fixed_dictionaries({"user_id": text}))}),
        COUNT_TOKENS: st.fixed_dictionaries(messages, optional=counted),
        URLS[RESPONSES]: st.fixed_dictionaries(
            {"model": either(st.just("demo")), "input": either(text | st.lists(item, min_size=1, max_size=3))},
            optional={"instructions": text, "tools": either(st.lists(function, max_size=2)),
                      "tool_choice": either(st.sampled_from(["auto", "none", "required", {"type": "function", "name": "lookup"}])),
                      "parallel_tool_calls": either(st.booleans()), "max_output_tokens": either(tokens),
                      "temperature": either(st.floats(0, 2)), "top_p": either(st.floats(0, 1)), "text": formats,
                      "previous_response_id": either(st.just("resp_" + "0" * 48)), "store": either(st.booleans()),
                      "metadata": either(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)),
                      "user": text, "stream": either(st.booleans()),
                      "reasoning": either(st.fixed_dictionaries({"effort": either(st.sampled_from(["low", "medium", "high"]))}))}),
    }


CLEAN, HOSTILE = strategies(hostile=False), strategies(hostile=True)
# Half the bodies are valid but for one to three faults, so each check of the validation is reached on its own.
bodies = {url: st.one_of(CLEAN[url], HOSTILE[url], *[st.builds(with_faults, CLEAN[url], st.lists(
    st.tuples(st.integers(0, 10_000), fault), min_size=1, max_size=3))] * 2) for url in CLEAN}


@pytest.fixture
def gated(alice: Party) -> Party:
    ensure_demo_route()
    routing.invalidate()
    # Room for anything, so every admitted request is sized by the gate and held, then settled.
    Price.objects.create(model="demo", input_per_million=Decimal("0.01"), output_per_million=Decimal("0.01"))
    Budget.objects.create(tenant=alice.tenant, amount=Decimal("1000000"), period="month")
    return alice


def send(party: Party | None, url: str, body: bytes, method: str = "POST", query: bytes = b"",
         anthropic_header: bool = False) -> AsgiReply:
    auth = {} if party is None else {"x-api-key": party.secret} if anthropic_header else party.auth
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **auth}
    return async_to_sync(asgi_call)(url, method=method, chunks=[body], headers=headers, query=query)


def assert_well_formed(url: str, reply: AsgiReply) -> None:
    """Never a 5xx; the endpoint's envelope for errors, its own shapes for answers."""
    assert reply.status < 500, (url, reply.status, reply.content[:500])
    anthropic = url.startswith("/v1/messages")
    if reply.status >= 400:
        (assert_anthropic_error if anthropic else assert_openai_error)(reply.status, reply.headers, reply.content)
        return
    if reply.headers["content-type"].startswith("text/event-stream"):
        kinds = [data.get("type") for _, data in sse_events(reply.content) if isinstance(data, dict)]
        ends = {"message_stop"} if anthropic else {"response.completed", "response.incomplete"}
        assert kinds and kinds[-1] in ends and not {"error", "response.failed"} & set(kinds), kinds[-3:]
        return
    answer = json.loads(reply.content)
    if url == COUNT_TOKENS:
        assert list(answer) == ["input_tokens"] and isinstance(answer["input_tokens"], int) and answer["input_tokens"] >= 0
    elif url == URLS[MESSAGES]:
        assert answer["type"] == "message" and answer["role"] == "assistant", answer
    elif url == URLS[RESPONSES]:
        assert answer["object"] == "response", answer
    else:  # a stored response, its deletion, or a page of its input items
        assert answer["object"] in ("response", "response.deleted", "list"), answer


def check(party: Party | None, url: str, body: bytes, method: str = "POST", query: bytes = b"",
          anthropic_header: bool = False) -> AsgiReply:
    before = UsageRecord.objects.count()
    reply = send(party, url, body, method, query, anthropic_header)
    assert_well_formed(url, reply)
    # A request to a model endpoint leaves one row when authenticated; counting and stored responses leave none.
    rows = 1 if party and url in (URLS[MESSAGES], URLS[RESPONSES]) else 0
    assert UsageRecord.objects.count() == before + rows, (reply.status, reply.content[:300])
    return reply


@pytest.mark.parametrize(("url", "examples"), [(URLS[MESSAGES], 800), (URLS[RESPONSES], 800), (COUNT_TOKENS, 400)],
                         ids=["messages", "responses", "count_tokens"])
def test_fuzzed_bodies_never_fail_the_gateway(gated: Party, url: str, examples: int) -> None:
    statuses: list[int] = []

    @settings(FUZZ, max_examples=examples)
    @given(body=bodies[url], ascii_only=st.booleans(), anthropic_header=st.booleans())
    def run(body: dict[str, Any], ascii_only: bool, anthropic_header: bool) -> None:
        statuses.append(check(gated, url, encode(body, ascii_only), anthropic_header=anthropic_header).status)

    run()
    # The mix reaches both sides: valid bodies answered, and refused ones.
    assert statuses.count(200) > examples // 20 and statuses.count(400) > examples // 5, sorted(set(statuses))


@settings(FUZZ, max_examples=500)
@given(url=st.sampled_from([URLS[MESSAGES], URLS[RESPONSES], COUNT_TOKENS]), body=raw_bytes,
       authenticated=st.integers(0, 9), method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]))
def test_raw_bytes_never_fail_the_gateway(gated: Party, url: str, body: bytes, authenticated: int, method: str) -> None:
    reply = check(gated if authenticated else None, url, body, method)
    assert reply.status != 200 or method == "POST"


def test_fuzzed_background_requests_never_fail_the_gateway(gated: Party, monkeypatch: pytest.MonkeyPatch) -> None:
    # The run is not sent anywhere: what is checked is the create step's answer, and that creating bills nothing.
    sent: list[Any] = []
    monkeypatch.setattr(app, "send_task", lambda *args, **kwargs: sent.append(args))
    statuses: list[int] = []

    @settings(FUZZ, max_examples=400)
    @given(body=bodies[URLS[RESPONSES]], ascii_only=st.booleans())
    def run(body: dict[str, Any], ascii_only: bool) -> None:
        before, queued = UsageRecord.objects.count(), len(sent)
        answer = send(gated, URLS[RESPONSES], encode({**body, "background": True}, ascii_only))
        assert answer.status < 500, answer.content[:500]
        statuses.append(answer.status)
        if answer.status == 200:
            response = json.loads(answer.content)
            assert (response["object"], response["status"], response["background"]) == ("response", "queued", True)
            assert len(sent) == queued + 1
        else:
            assert_openai_error(answer.status, answer.headers, answer.content)
            assert len(sent) == queued  # nothing queued for a refused request
        assert UsageRecord.objects.count() == before

    run()
    assert statuses.count(200) > 5 and statuses.count(400) > 50, sorted(set(statuses))


def stored_ids(party: Party, count: int) -> list[str]:
    """Ids of responses the party stored by asking the demo model."""
    ids = []
    for _ in range(count):
        reply = send(party, URLS[RESPONSES], json.dumps({"model": "demo", "input": "Remember this"}).encode())
        assert reply.status == 200, reply.content
        ids.append(reply.json()["id"])
    return ids


QUERY_KEYS = ["limit", "order", "after", "include", "include[]", "x"]
queries = st.one_of(
    st.just(b""),
    st.lists(st.tuples(st.sampled_from(QUERY_KEYS), st.one_of(
        st.sampled_from(["1", "20", "100", "101", "0", "-1", "asc", "desc", "", "1e3", "٣", "9" * 30, "\x00"]),
        any_text)), max_size=3).map(lambda pairs: "&".join(f"{quote(k)}={quote(v, errors='surrogatepass')}"
                                                          for k, v in pairs).encode()),
    st.sampled_from([b"limit=%ff", b"order=%", b"after=%00", b"limit", b"&&&", b"limit=1&limit=2"]),
)
ACTIONS = {"get": ("GET", ""), "delete": ("DELETE", ""), "cancel": ("POST", "/cancel"), "items": ("GET", "/input_items"),
           "put": ("PUT", ""), "get_cancel": ("GET", "/cancel"), "post_items": ("POST", "/input_items")}


def test_stored_response_ids_and_queries_never_fail_the_gateway(gated: Party) -> None:
    bob = make_party("bob")
    mine, theirs = stored_ids(gated, 2), stored_ids(bob, 1)
    seen: list[int] = []

    @settings(FUZZ, max_examples=400)
    @given(whose=st.sampled_from(["mine", "theirs", "mangled", "any"]), which=st.integers(0, 1), tail=any_text,
           action=st.sampled_from(sorted(ACTIONS)), query=queries)
    def run(whose: str, which: int, tail: str, action: str, query: bytes) -> None:
        response_id = {"mine": mine[which], "theirs": theirs[0], "mangled": mine[which][: which * 7 + 3] + tail,
                       "any": tail}[whose]
        method, suffix = ACTIONS[action]
        path = "/v1/responses/" + response_id + suffix
        reply = check(gated, path, b"", method, query)
        seen.append(reply.status)
        if whose == "theirs":  # bob's response does not exist for alice: answered as an id never issued
            unknown = check(gated, path.replace(theirs[0], "resp_" + "f" * 48), b"", method, query)
            assert reply.status == unknown.status and reply.status != 200, reply.content
            assert {k: v for k, v in reply.json()["error"].items() if k != "message"} == {
                k: v for k, v in unknown.json()["error"].items() if k != "message"}

    run()
    assert StoredResponse.objects.filter(pk=theirs[0]).exists()  # alice could not delete it
    assert 200 in seen and 404 in seen and 400 in seen, sorted(set(seen))


ODD_VALUES = {
    "input": {"input": "a\x00b"}, "instructions": {"instructions": "Be brief\x00"}, "metadata": {"metadata": {"note": "x\x00y"}},
    "huge_int": {"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "maximum": 2**70}}]},
}


@pytest.mark.parametrize("where", sorted(ODD_VALUES))
def test_a_stored_response_with_odd_values_can_be_read_back(gated: Party, where: str) -> None:
    # PostgreSQL's jsonb refuses U+0000 in a string, and fast JSON encoders refuse integers past 64 bits. A response
    # told it is stored (store defaults to true) must be found by GET and by previous_response_id, or the request
    # refused up front; never a 200 for a lost response.
    body: dict[str, Any] = {"model": "demo", "input": "Remember this", **ODD_VALUES[where]}
    created = send(gated, URLS[RESPONSES], json.dumps(body).encode())
    if created.status == 400:
        assert_openai_error(created.status, created.headers, created.content, 400)
        return
    assert created.status == 200, created.content
    response_id = created.json()["id"]
    found = send(gated, f"/v1/responses/{response_id}", b"", "GET")
    assert found.status == 200, found.content
    follow_up = send(gated, URLS[RESPONSES], json.dumps(
        {"model": "demo", "input": "And now?", "previous_response_id": response_id}).encode())
    assert follow_up.status == 200, follow_up.content


@pytest.mark.parametrize("url", [URLS[MESSAGES], URLS[RESPONSES], COUNT_TOKENS])
@pytest.mark.parametrize("how", ["too_large", "stalled", "undecodable_query"])
def test_requests_refused_before_the_view_answer_in_the_endpoints_envelope(gated: Party, settings: Any, url: str,
                                                                          how: str) -> None:
    settings.TOLLGATE_BODY_TIMEOUT_SECONDS = 1
    body = json.dumps({"model": "demo", "max_tokens": 5, "input": "hi", "messages": [{"role": "user", "content": "hi"}]})
    headers = {**gated.auth, "Content-Type": "application/json", "Content-Length": str(len(body))}
    call: dict[str, Any] = {"chunks": [body.encode()], "headers": headers}
    if how == "too_large":
        call["headers"] = {**headers, "Content-Length": str(10**10)}
    elif how == "stalled":  # half the body, then nothing more
        call.update(chunks=[body.encode()[:10]], finished=False)
    else:
        call["query"] = b"beta=\xff\xfe"
    reply = async_to_sync(asgi_call)(url, **call)
    expected = {"too_large": 413, "stalled": 408, "undecodable_query": 400}[how]
    check = assert_anthropic_error if url.startswith("/v1/messages") else assert_openai_error
    check(reply.status, reply.headers, reply.content, expected)
