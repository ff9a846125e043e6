from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.db import connection

from gateway_site.settings import BASE_DIR

from ..live import tollgate_server
from .test_settings import start_with

APP_SERVICES = ("web", "migrate", "worker", "beat")
# Exact versions: PostgreSQL's are major.minor, the others' major.minor.patch.
PINNED_IMAGES = {
    "postgres": r"postgres:\d+\.\d+",
    "redis": r"redis:\d+\.\d+\.\d+",
    "mailpit": r"axllent/mailpit:v\d+\.\d+\.\d+",
    "prometheus": r"prom/prometheus:v\d+\.\d+\.\d+",
    "grafana": r"grafana/grafana:\d+\.\d+\.\d+",
    "lb": r"nginx:\d+\.\d+\.\d+-alpine",
}
NGINX_CONFIG = BASE_DIR / "deploy" / "nginx" / "nginx.conf"


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
    assert set(services) == {"postgres", "redis", "mailpit", "prometheus", "grafana", "lb", *APP_SERVICES}
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


def env_files(service: dict[str, Any]) -> list[str]:
    """The service's env_file entries (a string, a list of strings, or of {path: ...}), as paths."""
    entries = service.get("env_file", [])
    entries = [entries] if isinstance(entries, str) else entries
    return [entry if isinstance(entry, str) else entry["path"] for entry in entries]


def test_images_are_pinned_to_exact_versions(compose: dict[str, Any]) -> None:
    for service, pattern in PINNED_IMAGES.items():
        image = compose["services"][service]["image"]
        assert re.fullmatch(pattern, image), f"{service}: {image} is not an exact version"
    bases = re.findall(r"^FROM\s+(\S+)", (BASE_DIR / "Dockerfile").read_text(), re.MULTILINE)
    assert bases and all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+", base) for base in bases), bases


@pytest.mark.parametrize("service", APP_SERVICES)
def test_every_setting_in_env_reaches_the_app_containers(compose: dict[str, Any], service: str) -> None:
    # Without env_file only the variables substituted into `environment` arrive; DJANGO_SECURE_* and the rest
    # of the README's table set in .env would be silently ignored.
    assert env_files(compose["services"][service]) == [".env"]
    example = (BASE_DIR / ".env.example").read_text()
    for secret in ("DJANGO_SECRET_KEY", "TOLLGATE_KEY_PEPPER", "POSTGRES_PASSWORD"):
        assert re.search(rf"^{secret}=", example, re.MULTILINE)


def test_the_web_healthcheck_asks_the_readiness_endpoint(compose: dict[str, Any]) -> None:
    # Worker and beat wait for web to be healthy: readiness includes "migrations applied", which liveness did not.
    check = " ".join(compose["services"]["web"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/health/ready" in check and "/admin/" not in check


@pytest.mark.django_db(transaction=True)
def test_the_web_healthcheck_passes_when_allowed_hosts_omit_127_0_0_1(compose: dict[str, Any], tmp_path: Path) -> None:
    check = compose["services"]["web"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    with tollgate_server(connection.settings_dict["NAME"], tmp_path / "tollgate.log",
                         DJANGO_ALLOWED_HOSTS="gw.example.com") as url:
        code = check[3].replace("http://127.0.0.1:8000", url)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        # What the issue saw with the former check: Django refuses the host, so the container never gets healthy.
        former = subprocess.run([sys.executable, "-c", code.replace("/health/ready", "/admin/login/")],
                                capture_output=True, text=True, timeout=30)
        assert former.returncode != 0 and "400" in former.stderr


def test_the_web_server_runs_the_lifespan_that_starts_and_flushes_the_upkeep(compose: dict[str, Any]) -> None:
    # Without it, journals of dead processes wait for the first /v1 request, and shutdown leaves spooled rows unflushed.
    assert "--lifespan on" in " ".join(compose["services"]["web"]["command"])
    assert "--lifespan on" in (BASE_DIR / "Dockerfile").read_text()
    assert "--lifespan off" not in (BASE_DIR / "README.md").read_text()


def test_the_worker_serves_its_own_metrics_on_the_internal_network_only(compose: dict[str, Any]) -> None:
    # Its task metrics are in its own container's directory, which web's scrape never reads (README, Metrics).
    services = compose["services"]
    worker = services["worker"]
    assert worker["environment"]["TOLLGATE_METRICS_BIND"] == "0.0.0.0:9101"
    assert "9101" in [str(port) for port in worker["expose"]] and "ports" not in worker  # never published
    # Not on a volume: files are named by process id, and ids repeat across containers.
    directory = worker["environment"]["TOLLGATE_METRICS_DIR"]
    assert directory.startswith("/") and "volumes" not in worker
    for name in ("web", "beat"):
        assert "TOLLGATE_METRICS_BIND" not in services[name]["environment"]
        assert "TOLLGATE_METRICS_DIR" not in services[name]["environment"]
        assert not any(directory in str(volume) for volume in services[name].get("volumes", []))
    assert worker["environment"]["DATABASE_URL"] == services["web"]["environment"]["DATABASE_URL"]  # the rest merged


def test_web_runs_two_replicas_behind_the_load_balancer(compose: dict[str, Any]) -> None:
    services = compose["services"]
    web, lb = services["web"], services["lb"]
    assert web["deploy"]["replicas"] == 2
    assert "ports" not in web and "container_name" not in web  # two replicas cannot both bind one host port
    assert "8000" in [str(port) for port in web["expose"]] and "--port 8000" in " ".join(web["command"])
    # The balancer publishes what the README tells users, and starts once the replicas are ready.
    assert lb["ports"] == ["127.0.0.1:8000:8000"]
    assert lb["depends_on"]["web"]["condition"] == "service_healthy"
    assert lb["volumes"] == ["./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro"] and NGINX_CONFIG.exists()


def test_the_load_balancer_passes_streams_through_and_names_the_client(compose: dict[str, Any]) -> None:
    config = re.sub(r"#.*", "", NGINX_CONFIG.read_text())  # what nginx reads, without the comments
    # The web service's DNS name, re-resolved, and the port the replicas listen on.
    assert re.search(r"upstream tollgate \{[^}]*\bserver web:8000 resolve\b", config)
    assert "resolver 127.0.0.11" in config  # Docker's embedded DNS
    assert re.search(r"^\s*listen 8000;", config, re.MULTILINE)
    [location] = re.findall(r"location / \{([^}]*)\}", config)
    assert "proxy_pass http://tollgate;" in location
    assert "proxy_buffering off;" in location  # each SSE event leaves as it arrives
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", location).group(1))  # type: ignore[union-attr]
    assert read_timeout > 120  # longer than TOLLGATE_UPSTREAM_READ_TIMEOUT's default: Tollgate times out first
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in location
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in location
    assert "proxy_set_header Host $http_host;" in location
    assert "non_idempotent" not in config  # a POST that reached a replica is never sent to the other one too
    body_limit = int(re.search(r"client_max_body_size (\d+)m;", config).group(1))  # type: ignore[union-attr]
    assert body_limit * 2**20 > 10485760  # Tollgate answers its own 413, in OpenAI's envelope
    [websocket] = re.findall(r"location /ws/ \{([^}]*)\}", config)
    assert "proxy_set_header Upgrade $http_upgrade;" in websocket


def test_migrations_run_once_before_the_replicas_start(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate, web = services["migrate"], services["web"]
    assert migrate["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert migrate["restart"] == "no"  # a one-shot: restarting it after success would loop
    assert web["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis"):  # the merged dependencies are kept
        assert web["depends_on"][name]["condition"] == "service_healthy"
        assert migrate["depends_on"][name]["condition"] == "service_healthy"


def readme_section(title: str) -> str:
    readme = (BASE_DIR / "README.md").read_text()
    start = readme.index(f"\n### {title}\n") + 1
    end = re.search(r"^##", readme[start + 3:], re.MULTILINE)
    return readme[start:start + 3 + end.start()] if end else readme[start:]


def test_the_readme_fleet_section_names_real_settings_services_and_sections(compose: dict[str, Any]) -> None:
    section = readme_section("Running a fleet")
    settings_source = (BASE_DIR / "gateway_site" / "settings.py").read_text()
    for name in set(re.findall(r"\b(?:TOLLGATE|DJANGO)_[A-Z_]+\b", section)):
        assert f'"{name}"' in settings_source, f"{name} is not a setting"
    for service in re.findall(r"--scale (\w+)=", section) + re.findall(r"Compose's `(\w+)` volume", section):
        assert service in compose["services"] or service in compose["volumes"]
    headings = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                for line in (BASE_DIR / "README.md").read_text().splitlines() if line.startswith("#")}
    for anchor in re.findall(r"\]\(#([a-z0-9-]+)\)", section):
        assert anchor in headings, f"#{anchor} is not a heading of the README"
