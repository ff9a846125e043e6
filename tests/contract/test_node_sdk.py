"""The official OpenAI Node SDK's Responses API against a live Tollgate: node/responses.mjs drives it, these tests
check what it got, what reached the upstream, and the ledger.

``./tollgate test`` installs the SDK (npm ci in tests/contract/node, from the lock file) before pytest runs. Without
node on the machine these tests are skipped on SQLite; with TOLLGATE_NODE_TESTS=required (CI) or on PostgreSQL it is a
failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from openai.types.responses import Response

from ..conftest import Party
from .conftest import WEATHER_ANSWER, FakeLLM, Row, check_ledger, tool_calls_of
from .responses_checks import check_stream, event_of, function_call, usage_pair

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see committed rows

NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        message = "needs Node.js 20+ and npm for the OpenAI Node SDK (install nodejs, then ./tollgate test runs npm ci)"
        # A quick local run (SQLite) may do without them; CI and PostgreSQL runs may not.
        if os.environ.get("TOLLGATE_NODE_TESTS") == "required" or connection.vendor != "sqlite":
            pytest.fail(message)
        pytest.skip(message)
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        pytest.fail("the OpenAI Node SDK is not installed: run `npm ci --prefix tests/contract/node` "
                    "(./tollgate test does it before the suite)")
    return found


def run(node: str, url: str, party: Party, model: str, scenario: str) -> dict[str, Any]:
    env = {**os.environ, "TOLLGATE_BASE_URL": f"{url}/v1", "TOLLGATE_API_KEY": party.secret}
    done = subprocess.run([node, "responses.mjs", model, scenario], cwd=NODE_DIR, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def response(data: dict[str, Any]) -> Response:
    """The Node SDK's object as the Python SDK's type: both SDKs must accept what Tollgate sent."""
    return Response.model_validate(data)


def test_demo_text_and_previous_response_id(node: str, live_server_url: str, alice: Party, routes: None) -> None:
    result = run(node, live_server_url, alice, "demo", "text")
    first = response(result["first"])
    assert first.model == "demo" and result["first_text"] == first.output_text
    assert first.output_text.startswith("Hello from Tollgate's demo model!")
    second = check_stream([event_of(e) for e in result["events"]])
    assert second.previous_response_id == first.id
    assert "You said: “Remember the word marmalade" in second.output_text  # the first turn came from storage
    check_ledger(alice, Row("responses", "demo", False, usage_pair(first)),
                 Row("responses", "demo", True, usage_pair(second)))


@pytest.mark.parametrize("model, path", [("fake-chat", "/v1/chat/completions"), ("fake-claude", "/v1/messages")])
def test_fakellm_function_call_round_trip(node: str, live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM,
                                          model: str, path: str) -> None:
    result = run(node, live_server_url, alice, model, "tools")
    exchanges = fakellm.exchanges()
    assert [e.path for e in exchanges] == [path] * 3
    first = response(result["first"])
    call = function_call(first)
    assert first.model == model and call.call_id == tool_calls_of(exchanges[0])[0]["id"]

    second = check_stream([event_of(e) for e in result["events"]])
    assert second.output_text == result["second_text"] == WEATHER_ANSWER
    assert response(result["second"]).id == second.id and second.previous_response_id == first.id
    streamed = check_stream([event_of(e) for e in result["streamed"]])
    assert function_call(streamed).call_id == tool_calls_of(exchanges[2])[0]["id"]

    assert usage_pair(first) == exchanges[0].usage()
    expected = [Row("responses", model, False, usage_pair(first))]
    for answer, exchange in zip((second, streamed), exchanges[1:]):
        if exchange.usage() is None:  # fakellm reports no usage in chat streams: Tollgate estimates
            expected.append(Row("responses", model, True, usage_pair(answer), "estimated"))
        else:
            assert usage_pair(answer) == exchange.usage()  # tokens as the upstream reported them
            expected.append(Row("responses", model, True, usage_pair(answer)))
    check_ledger(alice, *expected)
