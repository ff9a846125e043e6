"""Failures as each official SDK sees them: its own error classes, from Tollgate and from the upstream, and one ledger
row for each request that reached the upstream.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from billing.models import UsageRecord

from ..conftest import Party
from .conftest import FakeLLM, ledger_rows
from .messages_checks import anthropic_sdk
from .responses_checks import openai_sdk

pytestmark = pytest.mark.django_db(transaction=True)  # the server process must see committed rows

REFUSED = "Please refuse this one."  # fakellm answers it with a 400 (see conftest.RULES)
NOBODY = "tg-000000000000-" + "x" * 40


def test_gateway_errors_in_each_sdks_classes(live_server_url: str, alice: Party, routes: None) -> None:
    messages = anthropic_sdk(live_server_url, alice).messages
    with pytest.raises(anthropic.AuthenticationError) as denied:
        anthropic.Anthropic(base_url=live_server_url, api_key=NOBODY, max_retries=0).messages.create(
            model="demo", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body["type"] == "error" and denied.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["error"]["type"] == "not_found_error"

    responses = openai_sdk(live_server_url, alice).responses
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=NOBODY, max_retries=0).responses.create(
            model="demo", input="hi")
    with pytest.raises(openai.NotFoundError) as unknown:
        responses.create(model="no-such-model", input="hi")
    assert unknown.value.code == "model_not_found"
    # A built-in tool cannot be carried to a chat upstream: a 400 that names it, before anything is sent.
    with pytest.raises(openai.BadRequestError) as builtin:
        responses.create(model="fake-chat", input="hi", tools=[{"type": "web_search"}])
    assert "web_search" in builtin.value.message and builtin.value.param and builtin.value.param.startswith("tools")
    assert not UsageRecord.objects.filter(tenant=alice.tenant, end_reason="complete").exists()


@pytest.mark.parametrize("model", ["fake-chat", "fake-claude"])
def test_upstream_refusal_in_each_sdks_classes(live_server_url: str, alice: Party, routes: None, fakellm: FakeLLM,
                                               model: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused_messages:
        anthropic_sdk(live_server_url, alice).messages.create(model=model, max_tokens=50,
                                                              messages=[{"role": "user", "content": REFUSED}])
    assert refused_messages.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as refused_responses:
        openai_sdk(live_server_url, alice).responses.create(model=model, input=REFUSED)
    for error in (refused_messages.value, refused_responses.value):
        assert error.status_code == 400 and fakellm.url not in str(error.body)
    assert [e.status for e in fakellm.exchanges()] == [400, 400]  # a refusal is not retried

    rows = sorted(ledger_rows(alice, 2), key=lambda r: r.endpoint)
    assert [(r.endpoint, r.public_model, r.end_reason, r.status_code) for r in rows] == [
        ("messages", model, "upstream_error", 400), ("responses", model, "upstream_error", 400)]
    assert all(r.completion_tokens == r.cost_picos == 0 for r in rows)  # a refused request is not billed
