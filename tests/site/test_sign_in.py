"""Sign-in throttling: per address and per (address, account), and per account only when many addresses fail."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from django.test import Client
from django_ratelimit import core as ratelimit_core

from gateway_site import views

from ..conftest import Party

PASSWORD = "correct horse battery"
ALICE_HOME, ATTACKER = "198.51.100.7", "203.0.113.9"


@pytest.fixture
def alice_signs_in(alice: Party) -> Party:
    alice.user.set_password(PASSWORD)
    alice.user.save()
    return alice


@pytest.fixture(autouse=True)
def one_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # django-ratelimit counts in fixed windows by the clock: each test here counts within one, so its clock stands
    # still (a test that moves it sets its own).
    start = time.time()
    monkeypatch.setattr(ratelimit_core, "time", SimpleNamespace(time=lambda: start))


def attempt(address: str, username: str, password: str = "wrong guess", path: str = "/login/") -> int:
    return Client().post(path, {"username": username, "password": password}, REMOTE_ADDR=address).status_code


def test_an_attacker_failing_for_alice_does_not_lock_her_out(alice_signs_in: Party) -> None:
    answers = [attempt(ATTACKER, "alice") for _ in range(12)]
    assert answers[:5] == [200] * 5 and set(answers[5:]) == {429}
    assert attempt(ATTACKER, "alice", PASSWORD) == 429  # the attacker's address stays limited, right password or not
    assert attempt(ALICE_HOME, "alice", PASSWORD) == 302
    # Case and spaces do not make a new account to count against.
    assert attempt(ATTACKER, " ALICE ") == 429


def test_one_address_is_limited_per_account_and_over_all_accounts(alice_signs_in: Party, bob: Party) -> None:
    client = Client()
    for _ in range(5):
        assert client.post("/login/", {"username": "alice", "password": "nope"}, REMOTE_ADDR=ATTACKER).status_code == 200
    refused = client.post("/login/", {"username": "alice", "password": "nope"}, REMOTE_ADDR=ATTACKER)
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= 60
    assert "Too many attempts" in refused.content.decode()
    # The same address trying other names runs into the per-address limit (20 a minute in all).
    answers = [attempt(ATTACKER, f"user-{i}") for i in range(16)]
    assert answers[:14] == [200] * 14 and answers[14:] == [429, 429]
    assert attempt("192.0.2.1", "bob", "pw-bob") == 302  # other addresses are untouched


def test_ipv6_addresses_of_one_network_count_as_one(alice_signs_in: Party) -> None:
    answers = [attempt(f"2001:db8:1:2::{i:x}", "alice") for i in range(1, 8)]
    assert answers[:5] == [200] * 5 and answers[5:] == [429, 429]
    assert attempt("2001:db8:1:3::1", "alice", PASSWORD) == 302


def test_many_addresses_failing_for_one_account_trip_its_limit(alice_signs_in: Party, bob: Party) -> None:
    assert attempt(ALICE_HOME, "alice", PASSWORD) == 302  # alice's usual address, known from now on
    botnet = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(views.ACCOUNT_ADDRESSES + 1)]
    assert [attempt(address, "alice") for address in botnet] == [200] * len(botnet)
    assert [attempt(address, "alice") for address in botnet[:3]] == [429] * 3  # one more failure each changes nothing

    refused = Client().post("/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR="192.0.2.50")
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= views.ACCOUNT_WINDOW
    wait = int(refused["Retry-After"])  # the page says the same wait as the header, not "a minute"
    said = f"{wait} seconds" if wait < 120 else f"{-(-wait // 60)} minutes"
    assert f"Wait {said}, then try again." in refused.content.decode()
    assert attempt(ALICE_HOME, "alice", PASSWORD) == 302  # her known address still gets in
    assert attempt("192.0.2.50", "bob", "pw-bob") == 302  # and only alice's account is limited


def test_one_address_failing_for_long_does_not_trip_the_account_limit(
    alice_signs_in: Party, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The account-wide count is of addresses, not attempts: one attacker failing every minute for twelve minutes
    # (60 failures) stays within its own limits and leaves alice's account open to new addresses.
    start = time.time()
    for minute in range(12):
        monkeypatch.setattr(ratelimit_core, "time", SimpleNamespace(time=lambda: start + 60 * minute))
        assert [attempt(ATTACKER, "alice") for _ in range(6)] == [200] * 5 + [429]
    assert attempt("192.0.2.60", "alice", PASSWORD) == 302


def test_the_admin_sign_in_is_limited_the_same_way(alice_signs_in: Party) -> None:
    alice_signs_in.user.is_staff = True
    alice_signs_in.user.save()
    answers = [attempt(ATTACKER, "alice", path="/admin/login/") for _ in range(7)]
    assert answers[:5] == [200] * 5 and answers[5:] == [429, 429]
    assert attempt(ALICE_HOME, "alice", PASSWORD, path="/admin/login/") == 302


def test_refusals_do_not_depend_on_the_form(alice_signs_in: Party) -> None:
    # A body without a username is one more attempt from the address, never a 500.
    client = Client()
    answers = [client.post("/login/", {}, REMOTE_ADDR=ATTACKER).status_code for _ in range(7)]
    assert answers[:5] == [200] * 5 and answers[5:] == [429, 429]
    assert client.post("/login/", {"username": "alice"}, REMOTE_ADDR="").status_code == 200
