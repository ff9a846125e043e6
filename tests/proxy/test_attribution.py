"""Request tags and end users: the x-tollgate-tags header, metadata pairs and the `user` field on the ledger row, on
every /v1 endpoint that reaches a provider, streamed or not; bad values refused in the endpoint's own envelope."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from accounts.keys import caller_by_id
from batches import lines, tasks
from billing import journal, recovery
from billing.models import UsageRecord
from billing.tags import MAX_END_USER_LENGTH, MAX_TAGS, is_tag, stored
from gateway_site.celery import app
from proxy import metering, routing
from proxy.attribution import attribute
from proxy.metering import Meter
from proxy.models import StoredResponse
from proxy.parsing import parse_data
from proxy.services import ensure_demo_route

from ..conftest import Party
from ..dialects.dialect_checks import PROMPT, assert_anthropic_error, assert_openai_error, exchange, sse_events
from ..proxy.v1_client import AsgiReply

URLS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings",
        "responses": "/v1/responses", "messages": "/v1/messages"}
STREAMS = ("chat", "completions", "responses", "messages")  # embeddings do not stream


def body_for(endpoint: str, *, stream: bool = False, **fields: Any) -> dict[str, Any]:
    bodies: dict[str, dict[str, Any]] = {
        "chat": {"model": "demo", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 20},
        "completions": {"model": "demo", "prompt": PROMPT, "max_tokens": 20},
        "embeddings": {"model": "demo", "input": PROMPT},
        "responses": {"model": "demo", "input": PROMPT, "max_output_tokens": 20},
        "messages": {"model": "demo", "max_tokens": 20, "messages": [{"role": "user", "content": PROMPT}]},
    }
    body = bodies[endpoint]
    if stream:
        body["stream"] = True
    return {**body, **fields}


def send(party: Party, endpoint: str, body: dict[str, Any], tags: str | None = None) -> tuple[AsgiReply, UsageRecord]:
    headers = dict(party.auth) if tags is None else {**party.auth, "x-tollgate-tags": tags}
    reply = async_to_sync(exchange)(URLS[endpoint], json.dumps(body).encode(), headers)
    return reply, UsageRecord.objects.get(request_id=reply["x-request-id"])


def user_fields(endpoint: str, user: Any) -> dict[str, Any]:
    return {"metadata": {"user_id": user}} if endpoint == "messages" else {"user": user}


@pytest.fixture
def party(alice: Party) -> Party:
    ensure_demo_route()
    return alice


@pytest.mark.parametrize(("endpoint", "stream"), [(endpoint, False) for endpoint in URLS] +
                         [(endpoint, True) for endpoint in STREAMS])
def test_header_tags_and_the_user_are_on_the_row(party: Party, endpoint: str, stream: bool) -> None:
    reply, row = send(party, endpoint, body_for(endpoint, stream=stream, **user_fields(endpoint, "customer-42")),
                      tags=" team:search , env:prod,,team:search")
    assert reply.status == 200, reply.content
    if stream:
        assert sse_events(reply.content)
    assert (row.end_reason, row.tags, row.end_user) == ("complete", ",env:prod,team:search,", "customer-42")


@pytest.mark.parametrize("endpoint", ["chat", "completions", "embeddings", "responses"])
def test_metadata_pairs_that_form_tags_are_recorded_and_the_others_forwarded_unrecorded(party: Party,
                                                                                       endpoint: str) -> None:
    metadata = {"team": "search", "feature": "auto complete", "release": "2026.11", "x" * 60: "long"}
    _, row = send(party, endpoint, body_for(endpoint, metadata=metadata), tags="env:prod")
    assert row.status_code == 200
    assert row.tags == ",env:prod,release:2026.11,team:search,"


def test_chat_metadata_that_is_not_strings_is_not_recorded_and_not_refused(party: Party) -> None:
    metadata = {"team": 5, "n": None, "ok": "yes", "nested": {"a": "b"}}
    _, row = send(party, "chat", body_for("chat", metadata=metadata))
    assert (row.status_code, row.tags) == (200, ",ok:yes,")
    _, row = send(party, "chat", body_for("chat", metadata="not an object"))
    assert (row.status_code, row.tags) == (200, "")


def test_metadata_fills_only_the_room_the_header_left(party: Party) -> None:
    header = ",".join(f"h{i}" for i in range(MAX_TAGS - 1))
    _, row = send(party, "chat", body_for("chat", metadata={"a": "1", "b": "2"}), tags=header)
    assert row.status_code == 200
    assert row.tags == stored([*(f"h{i}" for i in range(MAX_TAGS - 1)), "a:1"])


def test_a_messages_user_id_is_the_end_user_not_a_tag(party: Party) -> None:
    _, row = send(party, "messages", body_for("messages", metadata={"user_id": "u-7"}))
    assert (row.status_code, row.tags, row.end_user) == (200, "", "u-7")


def test_a_request_without_any_leaves_the_row_unattributed(party: Party) -> None:
    _, row = send(party, "chat", body_for("chat"))
    assert (row.status_code, row.tags, row.end_user) == (200, "", "")


@pytest.mark.parametrize("header", ["team search", "-leading", "a,b,c;d", "é", "x" * 65, "a\tb"])
@pytest.mark.parametrize("endpoint", ["chat", "messages"])
def test_an_invalid_header_tag_is_refused_in_the_endpoints_envelope(party: Party, endpoint: str, header: str) -> None:
    reply, row = send(party, endpoint, body_for(endpoint), tags=header)
    if endpoint == "messages":
        error = assert_anthropic_error(reply.status, reply.headers, reply.content, 400)
    else:
        error = assert_openai_error(reply.status, reply.headers, reply.content, 400)
        assert error["type"] == "invalid_request_error"
    assert error["param"] == "x-tollgate-tags"
    # The existing rule for a rejected request: one row, nothing billed, and no attribution.
    assert (row.end_reason, row.status_code, row.tags, row.end_user) == ("rejected", 400, "", "")
    assert (row.prompt_tokens, row.completion_tokens, row.cost_picos) == (0, 0, 0)


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_more_tags_than_allowed_are_refused(party: Party, endpoint: str) -> None:
    reply, row = send(party, endpoint, body_for(endpoint), tags=",".join(f"t{i}" for i in range(MAX_TAGS + 1)))
    error = assert_openai_error(reply.status, reply.headers, reply.content, 400)
    assert error["param"] == "x-tollgate-tags" and str(MAX_TAGS) in error["message"]
    assert (row.end_reason, row.tags) == ("rejected", "")
    _, row = send(party, endpoint, body_for(endpoint), tags=",".join(f"t{i}" for i in range(MAX_TAGS)))
    assert row.status_code == 200 and len(row.tags.strip(",").split(",")) == MAX_TAGS


@pytest.mark.parametrize("user", [42, ["u"], {"id": "u"}, True, 1.5])
@pytest.mark.parametrize("endpoint", ["chat", "completions", "embeddings", "responses", "messages"])
def test_a_user_that_is_not_a_string_is_refused(party: Party, endpoint: str, user: Any) -> None:
    reply, row = send(party, endpoint, body_for(endpoint, **user_fields(endpoint, user)))
    if endpoint == "messages":
        error = assert_anthropic_error(reply.status, reply.headers, reply.content, 400)
        assert error["param"] == "metadata.user_id"
    else:
        assert assert_openai_error(reply.status, reply.headers, reply.content, 400)["param"] == "user"
    assert (row.end_reason, row.end_user) == ("rejected", "")


@pytest.mark.parametrize("endpoint", ["chat", "embeddings", "responses", "messages"])
def test_a_user_longer_than_the_ledger_keeps_is_refused(party: Party, endpoint: str) -> None:
    reply, row = send(party, endpoint, body_for(endpoint, **user_fields(endpoint, "u" * (MAX_END_USER_LENGTH + 1))))
    assert reply.status == 400
    param = "metadata.user_id" if endpoint == "messages" else "user"
    assert reply.json()["error"]["param"] == param
    assert row.end_user == ""
    _, row = send(party, endpoint, body_for(endpoint, **user_fields(endpoint, "u" * MAX_END_USER_LENGTH)))
    assert (row.status_code, row.end_user) == (200, "u" * MAX_END_USER_LENGTH)


def test_a_user_with_nul_is_refused_rather_than_losing_the_row(party: Party) -> None:
    reply, row = send(party, "chat", body_for("chat", user="a\x00b"))
    assert assert_openai_error(reply.status, reply.headers, reply.content, 400)["param"] == "user"
    assert row.end_reason == "rejected"


def test_the_prompt_never_reaches_the_tags(party: Party) -> None:
    secret = "the-prompt-secret"
    body = body_for("chat", messages=[{"role": "user", "content": secret}, {"role": "user", "content": "team:x"}],
                    metadata={"note": f"{secret} with spaces"})
    _, row = send(party, "chat", body, tags="env:prod")
    assert row.status_code == 200
    assert row.tags == ",env:prod," and secret not in row.tags and row.end_user == ""


def test_a_batch_line_is_attributed_from_its_body(party: Party) -> None:
    context = lines.LineContext("batch_x", "chat", lines.batch_caller(caller_by_id(party.key.pk)))
    body = body_for("chat", user="customer-9", metadata={"team": "search", "bad": "no spaces please"})
    outcome = async_to_sync(lines.run_line)(context, "a", body)
    assert outcome is not None and outcome.status == 200, outcome
    row = UsageRecord.objects.get(request_id=outcome.request_id)
    assert (row.batch_id, row.tags, row.end_user) == ("batch_x", ",team:search,", "customer-9")
    outcome = async_to_sync(lines.run_line)(context, "b", body_for("chat", user=7))
    assert outcome is not None and outcome.status == 400 and outcome.body["error"]["param"] == "user"


def test_a_background_response_is_attributed_from_its_body(party: Party, client: Any) -> None:
    body = body_for("responses", background=True, user="customer-3", metadata={"job": "nightly", "note": "a b"})
    with mock.patch.object(app, "send_task"):
        created = client.post("/v1/responses", data=json.dumps(body), content_type="application/json",
                              headers=party.auth)
    assert created.status_code == 200, created.content
    tasks.run_background_response.apply(args=[created.json()["id"]])
    [row] = UsageRecord.objects.all()
    assert (row.endpoint, row.status_code, row.tags, row.end_user) == ("responses", 200, ",job:nightly,", "customer-3")


def test_a_background_response_keeps_its_header_tags_and_refuses_bad_ones(party: Party, client: Any) -> None:
    body = body_for("responses", background=True, metadata={"job": "nightly"})
    with mock.patch.object(app, "send_task") as sent:
        refused = client.post("/v1/responses", data=json.dumps(body), content_type="application/json",
                              headers={**party.auth, "x-tollgate-tags": "team:search, not a tag"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "x-tollgate-tags"
        assert not sent.called and not StoredResponse.objects.exists()
        created = client.post("/v1/responses", data=json.dumps(body), content_type="application/json",
                              headers={**party.auth, "x-tollgate-tags": "team:search"})
    assert created.status_code == 200, created.content
    tasks.run_background_response.apply(args=[created.json()["id"]])
    [row] = UsageRecord.objects.all()
    assert (row.status_code, row.tags) == (200, ",job:nightly,team:search,")


def test_a_killed_process_leaves_the_row_its_attribution(party: Party, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    book = journal.Journal(tmp_path)
    monkeypatch.setattr(metering, "journal", lambda: book)
    caller = caller_by_id(party.key.pk)
    meter = Meter("chat")
    meter.caller, meter.body = caller, parse_data(body_for("chat", user="u-5", metadata={"team": "a"}), "chat")
    attribute(meter, "env:prod", meter.body)
    meter.target = async_to_sync(routing.route)(caller, "demo")[0]
    async_to_sync(meter.begin)()
    metering._open.pop(meter.request_id)  # the process "dies" here: nothing renews or settles it
    entry = recovery.lost_entry(journal.read(book.path)[meter.request_id])
    assert (entry.tags, entry.end_user) == (",env:prod,team:a,", "u-5")
    book.close()


def test_without_header_metadata_or_user_nothing_is_set() -> None:
    meter = Meter("chat")
    attribute(meter, None, parse_data(body_for("chat"), "chat"))
    assert "tags" not in vars(meter) and "end_user" not in vars(meter)  # the class defaults, untouched


def test_a_refused_header_sets_nothing_on_the_meter() -> None:
    meter = Meter("chat")
    with pytest.raises(Exception):
        attribute(meter, "ok,not ok", parse_data(body_for("chat", user="u", metadata={"a": "b"}), "chat"))
    assert (meter.tags, meter.end_user) == ("", "")


HEADER_TEXT = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=200)


@hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=HEADER_TEXT | st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:=/@+-]{0,70}", fullmatch=True),
                                     max_size=20).map(",".join),
       endpoint=st.sampled_from(["chat", "messages"]))
def test_random_header_values_never_give_a_500(party: Party, header: str, endpoint: str) -> None:
    # ASGI servers strip the spaces around a header's value, as they do any other header's
    header = header.strip(" \t")
    reply, row = send(party, endpoint, body_for(endpoint), tags=header)
    tags = [tag for part in header.split(",") if (tag := part.strip())]
    if len(tags) <= MAX_TAGS and all(is_tag(tag) for tag in tags):
        assert (reply.status, row.tags) == (200, stored(tags)), reply.content
    else:
        assert reply.status == 400, reply.content
        envelope = reply.json()
        assert envelope["error"]["param"] == "x-tollgate-tags"
        assert (row.end_reason, row.tags) == ("rejected", "")


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(
    max_size=40)


@hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=JSON_SCALARS | st.text(min_size=250, max_size=260) | st.lists(JSON_SCALARS, max_size=2),
       metadata=st.dictionaries(st.text(max_size=20), JSON_SCALARS, max_size=20) | JSON_SCALARS,
       endpoint=st.sampled_from(["chat", "embeddings"]))
def test_random_users_and_metadata_never_give_a_500(party: Party, user: Any, metadata: Any, endpoint: str) -> None:
    reply, row = send(party, endpoint, body_for(endpoint, user=user, metadata=metadata))
    valid_user = user is None or (isinstance(user, str) and len(user) <= MAX_END_USER_LENGTH and "\x00" not in user)
    assert reply.status == (200 if valid_user else 400), reply.content
    if valid_user:
        assert row.end_user == (user or "")
        recorded = row.tags.strip(",").split(",") if row.tags else []
        assert len(recorded) <= MAX_TAGS and all(is_tag(tag) for tag in recorded)
        pairs = {f"{k}:{v}" for k, v in metadata.items() if isinstance(v, str)} if isinstance(metadata, dict) else set()
        assert set(recorded) <= pairs  # only metadata pairs, never anything else of the body
    else:
        assert reply.json()["error"]["param"] == "user" and row.end_user == ""
