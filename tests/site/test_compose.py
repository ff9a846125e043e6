from __future__ import annotations

import json
import os
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

BATCH_WORKERS = {"high": "worker-high", "default": "worker-default", "low": "worker-low"}  # tier -> service
WORKERS = ("worker", *BATCH_WORKERS.values())
APP_SERVICES = ("web", "migrate", *WORKERS, "beat")
# Exact versions: PostgreSQL's are major.minor, the others' major.minor.patch.
PINNED_IMAGES = {
    "postgres": r"postgres:\d+\.\d+",
    "redis": r"redis:\d+\.\d+\.\d+",
    "mailpit": r"axllent/mailpit:v\d+\.\d+\.\d+",
    "prometheus": r"prom/prometheus:v\d+\.\d+\.\d+",
    "grafana": r"grafana/grafana:\d+\.\d+\.\d+",
    "lb": r"nginx:\d+\.\d+\.\d+-alpine",
    "flower": r"mher/flower:\d+\.\d+\.\d+",
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
    assert set(services) == {"postgres", "redis", "mailpit", "prometheus", "grafana", "lb", "flower", *APP_SERVICES}
    for name in ("postgres", "redis", "web"):
        assert services[name]["healthcheck"]["test"]
    assert services["web"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["web"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in (*WORKERS, "beat"):
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


def mount_targets(service: dict[str, Any]) -> list[str]:
    return [str(volume).split(":")[1] for volume in service.get("volumes", [])]


@pytest.mark.parametrize("name", WORKERS)
def test_the_worker_serves_its_own_metrics_on_the_internal_network_only(compose: dict[str, Any], name: str) -> None:
    # Its task metrics are in its own container's directory, which web's scrape never reads (README, Metrics).
    services = compose["services"]
    worker = services[name]
    assert worker["environment"]["TOLLGATE_METRICS_BIND"] == "0.0.0.0:9101"
    assert "9101" in [str(port) for port in worker["expose"]] and "ports" not in worker  # never published
    # Not on a volume: files are named by process id, and ids repeat across containers.
    directory = worker["environment"]["TOLLGATE_METRICS_DIR"]
    assert directory.startswith("/")
    assert not any(directory.startswith(target) or target.startswith(directory) for target in mount_targets(worker))
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


def command_option(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


def test_one_worker_service_per_queue_and_the_housekeeping_worker_on_celery(compose: dict[str, Any]) -> None:
    from django.conf import settings

    services = compose["services"]
    worker = services["worker"]["command"]
    assert worker[:4] == ["celery", "-A", "gateway_site", "worker"] and command_option(worker, "--queues") == "celery"
    settings_source = (BASE_DIR / "gateway_site" / "settings.py").read_text()
    for tier, name in BATCH_WORKERS.items():
        command = services[name]["command"]
        assert command[:4] == ["celery", "-A", "gateway_site", "worker"] and "--beat" not in command
        # The queue's name is the one the settings read from .env (compose reads .env for ${...} too).
        variable = f"TOLLGATE_QUEUE_{tier.upper()}"
        assert command_option(command, "--queues") == f"${{{variable}:-{tier}}}" and f'"{variable}"' in settings_source
        assert interpolate(command_option(command, "--queues")) == settings.TOLLGATE_QUEUES[tier]
        assert int(command_option(command, "--concurrency")) >= 1
        assert command_option(command, "--hostname") == f"{tier}@%h"  # named by tier in Flower and `celery inspect`
        # Celery's warm shutdown lets the parts running end their lines before Docker kills the container.
        assert int(services[name]["stop_grace_period"].removesuffix("s")) >= 30
        # Below the web replicas' default share of 1024: interactive /v1 keeps the cores when both compete.
        assert services[name]["cpu_shares"] < services["web"].get("cpu_shares", 1024)
    concurrency = [int(command_option(services[name]["command"], "--concurrency")) for name in BATCH_WORKERS.values()]
    assert concurrency == sorted(concurrency, reverse=True)  # high gets the most processes


def data_paths(env: dict[str, str]) -> tuple[str, str]:
    """The journal directory and the files storage's location, as the settings build them in the image."""
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    [data_dir] = re.findall(r"^ENV .*\bTOLLGATE_DATA_DIR=(\S+)", dockerfile, re.MULTILINE)
    skip = ("DJANGO_", "TOLLGATE_", "DATABASE_URL", "REDIS_URL")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    clean.update({**env, "DJANGO_SETTINGS_MODULE": "gateway_site.settings", "TOLLGATE_DATA_DIR": data_dir})
    code = ("from django.conf import settings; "
            "print(settings.TOLLGATE_JOURNAL_DIR); print(settings.STORAGES['tollgate_files']['OPTIONS']['location'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=clean, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    journal, files = result.stdout.split()
    return journal, files


def test_web_and_the_batch_workers_share_the_journal_and_every_worker_the_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = {name: interpolate(str(value)) for name, value in services["web"]["environment"].items()}
    journal, files = data_paths(env)
    # Batch lines go through the journal as /v1 requests do: on one host, the processes that share the directory
    # replay a dead one's file (README, "Running a fleet"). The batch upkeep (worker) writes result files.
    for name in ("web", *BATCH_WORKERS.values()):
        assert f"journal:{journal}" in services[name]["volumes"], name
    for name in ("web", *WORKERS):
        assert f"files:{files}" in services[name]["volumes"], name
    assert {"journal", "files"} <= set(compose["volumes"])
    # The mount points exist in the image, owned by its user, so new named volumes are writable by it.
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    assert re.search(r"mkdir -p var/journal var/files && chown -R tollgate var", dockerfile)
    assert (journal, files) == ("/app/var/journal", "/app/var/files")
    for name in ("migrate", "beat"):
        assert "volumes" not in services[name]


def test_flower_is_optional_pinned_on_the_workers_broker_and_on_localhost_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    flower = services["flower"]
    assert flower["profiles"] == ["flower"]  # `docker compose up` leaves it out
    assert [name for name, service in services.items() if "profiles" in service] == ["flower"]
    assert re.fullmatch(PINNED_IMAGES["flower"], flower["image"])
    # The broker URL the workers use: TOLLGATE_BROKER_URL when .env sets one, else REDIS_URL, as the settings do.
    broker = flower["environment"]["CELERY_BROKER_URL"]
    assert broker.startswith("${TOLLGATE_BROKER_URL:-")
    assert interpolate(broker) == interpolate(services["worker"]["environment"]["REDIS_URL"])
    assert flower["ports"] == ["127.0.0.1:5555:5555"]  # it can stop workers and revoke tasks
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "env_file" not in flower  # the secrets in .env stay out of a third-party image


def test_the_readme_batches_section_names_real_settings_services_commands_and_sections(compose: dict[str, Any]) -> None:
    from django.conf import settings

    readme = (BASE_DIR / "README.md").read_text()
    section = readme[readme.index("\n## Batches and queues\n"):readme.index("\n## Configuration\n")]
    settings_source = (BASE_DIR / "gateway_site" / "settings.py").read_text()
    for name in set(re.findall(r"\bTOLLGATE_[A-Z_]+\b", section)):
        assert f'"{name}"' in settings_source, f"{name} is not a setting"
    services = compose["services"]
    for service in set(re.findall(r"`(worker[\w-]*)`", section)) | set(re.findall(r"--scale ([\w-]+)=", section)):
        assert service in services, service
    [profile] = re.findall(r"docker compose --profile (\w+) up -d", section)
    assert services["flower"]["profiles"] == [profile] and f"`{services['flower']['image']}`" in section
    # The worker commands name queues the settings define, with their default names.
    queues = {"celery", *settings.TOLLGATE_QUEUES.values()}
    for names in re.findall(r"^\.venv/bin/celery -A gateway_site worker --queues (\S+)", section, re.MULTILINE):
        assert set(names.split(",")) <= queues, names
    # The SDK snippet is Python, and the storage example works as written in a shell (and parses as the settings do).
    [snippet] = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    compile(snippet, "README.md", "exec")
    [options] = re.findall(r"^TOLLGATE_FILES_STORAGE_OPTIONS=.*$", section, re.MULTILINE)
    shell = subprocess.run(["bash", "-c", f'{options}; printf %s "$TOLLGATE_FILES_STORAGE_OPTIONS"'],
                           capture_output=True, text=True, timeout=10)
    assert isinstance(json.loads(shell.stdout), dict), shell
    headings = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                for line in readme.splitlines() if line.startswith("#")}
    for anchor in re.findall(r"\]\(#([a-z0-9-]+)\)", section):
        assert anchor in headings, f"#{anchor} is not a heading of the README"
