from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from gateway_site.settings import BASE_DIR

from .test_settings import start_with

APP_SERVICES = ("web", "worker", "beat")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())


def interpolate(value: str) -> str:
    """Resolve ${NAME:-default} and ${NAME:?error} as compose would, with a value for every required secret."""

    def resolve(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        return rest if op == ":-" else f"compose-test-{name.lower()}"

    return re.sub(r"\$\{(\w+)(:-|:\?)([^}]*)\}", resolve, value)


def test_services_healthchecks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "mailpit", *APP_SERVICES}
    for name in ("postgres", "redis", "web"):
        assert services[name]["healthcheck"]["test"]
    assert services["web"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["web"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("worker", "beat"):
        assert services[name]["depends_on"]["web"]["condition"] == "service_healthy"  # migrations ran first
    assert "migrate" in " ".join(services["web"]["command"])
    assert "uvicorn" in " ".join(services["web"]["command"])  # ASGI, never WSGI


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_environment_satisfies_the_settings(compose: dict[str, Any], service: str) -> None:
    env = {name: interpolate(str(value)) for name, value in compose["services"][service]["environment"].items()}
    assert "DJANGO_DEBUG" not in env  # compose runs production settings
    assert env["DATABASE_URL"].startswith("postgres://") and env["REDIS_URL"].startswith("redis://")
    assert env["EMAIL_HOST"] == "mailpit"
    result = start_with(env)
    assert result.returncode == 0, result.stderr
