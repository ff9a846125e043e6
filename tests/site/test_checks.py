"""System checks: several processes without shared state, and a money Redis that may evict keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core import checks as django_checks
from django.core.management import call_command

from gateway_site import checks

from .. import redis_servers

EMBEDDED = {"TOLLGATE_MONEY_REDIS_URL": "", "TOLLGATE_CHANNELS_REDIS_URL": "", "CELERY_BROKER_URL": "filesystem://",
            "CHANNEL_LAYERS": {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}}


def ids(messages: list[django_checks.CheckMessage]) -> list[str]:
    return [str(m.id) for m in messages]


def test_one_process_without_redis_is_fine(settings: object, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in EMBEDDED.items():
        setattr(settings, name, value)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    settings.TOLLGATE_PROCESSES = 1  # type: ignore[attr-defined]
    assert checks.shared_state() == []


@pytest.mark.parametrize("hint", ["WEB_CONCURRENCY", "TOLLGATE_PROCESSES"])
def test_several_processes_without_redis_warn_for_each_kind_of_state(
    settings: object, monkeypatch: pytest.MonkeyPatch, hint: str
) -> None:
    for name, value in EMBEDDED.items():
        setattr(settings, name, value)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    if hint == "WEB_CONCURRENCY":
        monkeypatch.setenv(hint, "4")
    else:
        settings.TOLLGATE_PROCESSES = 4  # type: ignore[attr-defined]
    found = checks.shared_state()
    assert ids(found) == ["tollgate.W001", "tollgate.W002", "tollgate.W003"]
    assert all(isinstance(m, django_checks.Warning) and "4 processes" in m.msg for m in found)
    assert "rate limits" in found[0].msg and "live usage page" in found[1].msg and "broker" in found[2].msg


def test_several_processes_sharing_redis_are_fine(settings: object, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.TOLLGATE_MONEY_REDIS_URL = "redis://127.0.0.1:1/0"  # type: ignore[attr-defined]
    settings.CELERY_BROKER_URL = "amqp://guest@127.0.0.1:1//"  # type: ignore[attr-defined]
    layer = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}
    settings.CHANNEL_LAYERS = layer  # type: ignore[attr-defined]
    monkeypatch.setenv("WEB_CONCURRENCY", "8")
    assert checks.shared_state() == []


def test_the_checks_run_with_manage_py_check(settings: object, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in EMBEDDED.items():
        setattr(settings, name, value)
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    call_command("check")
    assert "tollgate.W001" in capsys.readouterr().err


@pytest.fixture
def money_redis(settings: object) -> object:
    if reason := redis_servers.available():
        pytest.skip(reason)
    settings.TOLLGATE_MONEY_REDIS_CLUSTER = False  # type: ignore[attr-defined]
    return settings


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_a_money_redis_that_evicts_warns(money_redis: object, tmp_path: Path, policy: str) -> None:
    with redis_servers.server(tmp_path, "--maxmemory-policy", policy) as url:
        money_redis.TOLLGATE_MONEY_REDIS_URL = url  # type: ignore[attr-defined]
        [warning] = checks.money_eviction()
    assert warning.id == "tollgate.W004" and isinstance(warning, django_checks.Warning) and policy in warning.msg


def test_a_money_redis_with_noeviction_is_fine(money_redis: object, tmp_path: Path) -> None:
    with redis_servers.server(tmp_path, "--maxmemory-policy", "noeviction") as url:
        money_redis.TOLLGATE_MONEY_REDIS_URL = url  # type: ignore[attr-defined]
        assert checks.money_eviction() == []


def test_a_money_redis_that_forbids_config_is_an_info(money_redis: object, tmp_path: Path) -> None:
    with redis_servers.server(tmp_path, "--rename-command", "CONFIG", "") as url:
        money_redis.TOLLGATE_MONEY_REDIS_URL = url  # type: ignore[attr-defined]
        [info] = checks.money_eviction()
    assert info.id == "tollgate.I004" and isinstance(info, django_checks.Info) and "noeviction" in info.msg


def test_an_unreachable_money_redis_is_an_info(money_redis: object) -> None:
    from ..live import free_port

    money_redis.TOLLGATE_MONEY_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # type: ignore[attr-defined]
    [info] = checks.money_eviction()
    assert info.id == "tollgate.I005"
