from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.test import Client, override_settings

from accounts import keys, services
from accounts.keys import Caller
from proxy import auth

from ..conftest import Party

# /v1/nothing-here is answered only after authentication, so it exercises the auth step alone.
URL = "/v1/nothing-here"


def assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Token tg-0123456789ab-" + "a" * 40},
        {"x-api-key": ""},
    ],
)
def test_missing_or_wrong_scheme_is_401(client: Client, db: None, headers: dict[str, str]) -> None:
    error = assert_envelope(client.get(URL, headers=headers), 401, "invalid_api_key")
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "presented",
    ["sk-garbled-secret-value", "tg-0123456789ab-" + "Z" * 40, "tg-" + "x" * 500, "tg-\u00e9\u00e9-secret"],
)
def test_garbled_and_unknown_keys_are_401_without_echo(client: Client, db: None, presented: str) -> None:
    response = client.get(URL, headers={"Authorization": f"Bearer {presented}"})
    error = assert_envelope(response, 401, "invalid_api_key")
    assert presented not in response.content.decode()
    assert "Traceback" not in error["message"]


def test_revoked_key_is_401_and_does_not_echo_the_secret(client: Client, alice: Party) -> None:
    services.revoke_key(key=alice.key)
    response = client.get(URL, headers=alice.auth)
    assert assert_envelope(response, 401, "invalid_api_key")["message"] == "This API key has been revoked."
    assert alice.secret not in response.content.decode()


def test_bearer_and_x_api_key_are_both_accepted(client: Client, alice: Party) -> None:
    assert_envelope(client.get(URL, headers=alice.auth), 404, "unknown_url")
    assert_envelope(client.get(URL, headers={"x-api-key": alice.secret}), 404, "unknown_url")
    assert_envelope(client.get(URL, headers={"Authorization": f"bearer {alice.secret}"}), 404, "unknown_url")


def test_inactive_tenant_is_403(client: Client, alice: Party) -> None:
    alice.tenant.is_active = False
    alice.tenant.save()
    services.forget_tenant_keys(tenant=alice.tenant)
    assert_envelope(client.get(URL, headers=alice.auth), 403, "tenant_inactive")


def test_unknown_paths_on_v1_are_json_never_html(client: Client, alice: Party) -> None:
    for path in ("/v1/", "/v1/chat/completion", "/v1/nothing/here"):
        response = client.post(path, data="{}", content_type="application/json", headers=alice.auth)
        assert_envelope(response, 404, "unknown_url")


def test_requests_presenting_one_key_together_share_one_lookup(alice: Party, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    async def slow_lookup(key: str) -> Caller:
        calls.append(key)
        await asyncio.sleep(0.05)  # still in flight when the other requests arrive
        return await sync_to_async(keys.lookup)(key)

    monkeypatch.setattr(auth, "alookup", slow_lookup)
    unknown = "tg-0123456789ab-" + "Z" * 40

    async def sixteen_then_an_unknown_pair() -> tuple[list[Caller], list[BaseException]]:
        callers = await asyncio.gather(*(auth.shared_lookup(alice.secret) for _ in range(16)))
        failures = await asyncio.gather(auth.shared_lookup(unknown), auth.shared_lookup(unknown), return_exceptions=True)
        return callers, failures

    with override_settings(TOLLGATE_KEY_LOCAL_CACHE_SECONDS=0):
        callers, failures = async_to_sync(sixteen_then_an_unknown_pair)()
    assert calls == [alice.secret, unknown]  # one lookup per key, not one per request
    assert {c.key_id for c in callers} == {alice.key.id}
    assert [type(f) for f in failures] == [keys.KeyRejected, keys.KeyRejected]
    assert auth._pending == {}  # nothing held once answered: the presented keys are not kept
