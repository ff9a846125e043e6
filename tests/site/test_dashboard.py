"""The Grafana dashboard, its provisioning, and Prometheus and Grafana in Docker Compose.

The dashboard is JSON kept in the repository; nothing here runs Docker or Grafana. What can break silently is
checked instead: a panel querying a metric that /metrics does not export (an empty graph nobody notices), PromQL
that rates a gauge or takes a quantile without `le`, and compose mounts that point at files that are not there.
"""

from __future__ import annotations

import json
import os
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from celery import shared_task
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from billing.models import Price
from gateway_site import metrics
from gateway_site.settings import BASE_DIR

from ..conftest import make_party
from ..factories import make_route
from ..live import tollgate_server

DASHBOARD = BASE_DIR / "deploy" / "grafana" / "dashboards" / "tollgate.json"
PROMETHEUS_CONFIG = BASE_DIR / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = BASE_DIR / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARDS = BASE_DIR / "deploy" / "grafana" / "provisioning" / "dashboards" / "tollgate.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# The /metrics contract (README, Operating Tollgate), by type: what PromQL may do with each.
COUNTERS = {
    "tollgate_requests_total", "tollgate_prompt_tokens_total", "tollgate_completion_tokens_total",
    "tollgate_cost_dollars_total", "tollgate_refusals_total", "tollgate_upstream_errors_total",
    "tollgate_celery_tasks_total", "tollgate_celery_task_failures_total", "process_cpu_seconds_total",
}
HISTOGRAMS = {
    "tollgate_request_duration_seconds", "tollgate_time_to_first_byte_seconds", "tollgate_overhead_seconds",
    "tollgate_ledger_write_seconds", "tollgate_celery_task_duration_seconds",
}
GAUGES = {
    "tollgate_deployment_cooling_down", "tollgate_requests_in_flight", "tollgate_ledger_spooled_rows",
    "tollgate_journal_backlog_bytes", "tollgate_budget_holds_outstanding", "tollgate_celery_queue_length",
    "tollgate_budgets_near_limit", "process_resident_memory_bytes",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries something: rows are only headings (a collapsed row holds its panels)."""
    panels = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in data_panels(dashboard) for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: not its functions, keywords, labels or numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        followed_by = expr[match.end():].lstrip()
        if followed_by.startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(match.group())
    return names


def base_name(name: str) -> str:
    """A histogram's series (_bucket, _sum, _count) belong to the histogram's own name."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    names = {base_name(name) for expr in expressions(dashboard) for name in metric_names(expr)}
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition", "")
        names.update(base_name(m) for m in re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)", query))
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(tollgate_request_duration_seconds_bucket'
            '{job=~"$job", model=~"$model"}[$__rate_interval]))) / on (job) group_left sum(up offset 5m) * 3600')
    assert metric_names(expr) == {"tollgate_request_duration_seconds_bucket", "up"}
    assert base_name("tollgate_request_duration_seconds_bucket") == "tollgate_request_duration_seconds"
    assert base_name("tollgate_requests_total") == "tollgate_requests_total"


def test_the_dashboard_is_json_with_a_title_and_a_datasource_on_every_panel(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "tollgate" and dashboard["title"] == "Tollgate"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 39
    panels = data_panels(dashboard)
    assert len(panels) >= 20
    rows = [panel for panel in dashboard["panels"] if panel["type"] == "row"]
    ids = [panel["id"] for panel in rows + panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["title"].strip(), panel
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip() and target["refId"], panel["title"]
    for row in rows:
        assert row["title"].strip()


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_the_datasource_is_a_variable_that_defaults_to_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    provisioned = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]
    assert variables["datasource"]["current"]["value"] in {source["uid"] for source in provisioned}
    for name in ("job", "model"):
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["includeAll"] and variables[name]["allValue"]


def test_the_dashboard_shows_every_metric_of_the_contract(dashboard: dict[str, Any]) -> None:
    assert queried_metrics(dashboard) == COUNTERS | HISTOGRAMS | GAUGES


@shared_task(name="tests.dashboard.fails")
def failing_task() -> None:
    raise RuntimeError("a task that fails, for the dashboard's failure panel")


def exported(text: str) -> dict[str, int]:
    """Metric name -> number of samples in a scrape: histograms and counters under their own names, as PromQL
    sees them (a counter's family is ``name`` without ``_total``; its samples carry ``_total``)."""
    found: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        found.setdefault(base_name(family.name), 0)
        for sample in family.samples:
            name = base_name(sample.name)
            found[name] = found.get(name, 0) + 1
    return found


@pytest.mark.django_db(transaction=True)
def test_every_metric_the_dashboard_queries_is_exported_after_known_traffic(
        dashboard: dict[str, Any], mock_upstream_url: str, tmp_path: Path) -> None:
    if not metrics.enabled():
        pytest.skip("TOLLGATE_METRICS is off in this test run")
    from billing.tasks import reap_expired_holds

    for model in ("mock", "mock-500"):
        make_route(model, upstream_model=model, base_url=f"{mock_upstream_url}/v1", provider_name="mock")
        Price.objects.create(model=model, input_per_million=Decimal("100"), output_per_million=Decimal("200"))
    alice = make_party("alice")
    token = "ops-token-for-the-dashboard-test-0123456789"
    # The server writes into this process's metrics directory, as every process of a host does: the Celery tasks run
    # here (eagerly, through the same signals a worker sends) are in the server's scrape.
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    with tollgate_server(connection.settings_dict["NAME"], tmp_path / "tollgate.log", TOLLGATE_METRICS="on",
                         TOLLGATE_METRICS_DIR=directory, TOLLGATE_OPS_TOKEN=token) as url:
        v1 = f"{url}/v1/chat/completions"
        chat = {"model": "mock", "messages": [{"role": "user", "content": "Hello"}]}
        assert httpx.post(v1, headers=alice.auth, json=chat, timeout=10).status_code == 200
        streamed = {**chat, "stream": True, "stream_options": {"include_usage": True}}
        assert httpx.post(v1, headers=alice.auth, json=streamed, timeout=10).status_code == 200
        assert httpx.post(v1, headers={"Authorization": "Bearer tg-not-a-key"}, json=chat, timeout=10).status_code == 401
        for _ in range(3):  # three failures in a row: the deployment sits out
            assert httpx.post(v1, headers=alice.auth, json={**chat, "model": "mock-500"}, timeout=10).status_code == 502
        reap_expired_holds.delay()
        # Not re-raised here, as in a worker: an eager task that propagates its error sends no failure signal.
        assert failing_task.apply(throw=False).failed()

        wanted = queried_metrics(dashboard)
        deadline = time.monotonic() + 20  # gauges without a request (cooling down) are refreshed every few seconds
        while True:
            r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert r.status_code == 200, r.text
            found = exported(r.text)
            missing = {name for name in wanted if name not in found}
            empty = {name for name in wanted - missing if not found[name]}
            if not (missing or empty) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert not missing, f"the dashboard queries metrics that /metrics does not export: {sorted(missing)}"
    assert not empty, f"exported without a sample after traffic that should give them one: {sorted(empty)}"
    assert token not in r.text and alice.secret not in r.text


def test_promql_rates_counters_and_buckets_only_and_quantiles_keep_le(dashboard: dict[str, Any]) -> None:
    for expr in expressions(dashboard):
        for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r"\{[^}]*\}", "", expr)):
            name = match.group()
            before = re.sub(r"\{[^}]*\}", "", expr)[: match.start()].rstrip()
            inside_rate = before.endswith(("rate(", "increase("))
            if name in COUNTERS or base_name(name) in HISTOGRAMS:
                assert inside_rate, f"{name} is a counter: rate() or increase() it, in {expr}"
            if name in GAUGES:
                assert not inside_rate, f"{name} is a gauge: never rate() it, in {expr}"
            if base_name(name) in HISTOGRAMS:
                assert name.endswith("_bucket"), expr  # the dashboard reads histograms through quantiles
        for quantile in re.finditer(r"histogram_quantile\(", expr):
            rest = expr[quantile.end():]
            assert re.match(r"\s*0\.\d+\s*,\s*sum by \(le\b[^)]*\)\s*\(rate\(\w+_bucket\{", rest), expr
        assert "[$__rate_interval]" in expr or "[$__range]" in expr or "rate(" not in expr, expr


def test_compose_runs_prometheus_and_grafana_on_pinned_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]  # README, Dashboards
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """The service's bind mounts from this repository: container path -> file or folder here."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = BASE_DIR / source
    return mounts


@pytest.mark.parametrize("service", ["prometheus", "grafana"])
def test_compose_mounts_files_that_exist(compose: dict[str, Any], service: str) -> None:
    mounts = bind_mounts(compose["services"][service])
    assert mounts
    for target, source in mounts.items():
        assert source.exists(), f"{service} mounts {source} at {target}, which is not in the repository"
        assert compose["services"][service]["volumes"][list(mounts).index(target)].endswith(":ro")


def test_prometheus_scrapes_metrics_with_the_ops_token_from_env(compose: dict[str, Any]) -> None:
    service = compose["services"]["prometheus"]
    config_path = "/etc/prometheus/prometheus.yml"
    assert f"--config.file={config_path}" in service["command"]
    assert bind_mounts(service)[config_path] == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = {job["job_name"]: job for job in config["scrape_configs"]}["tollgate"]
    assert job["metrics_path"] == "/metrics"
    # One target per web replica (compose's DNS answers one address each): the metric files are per container.
    assert job["dns_sd_configs"] == [{"names": ["web"], "type": "A", "port": 8000, "refresh_interval": "30s"}]
    assert "static_configs" not in job
    assert "--port 8000" in " ".join(compose["services"]["web"]["command"])  # the port uvicorn listens on
    # The token comes from .env through a compose secret, never from a file in the repository.
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/tollgate_ops_token"}
    assert service["secrets"] == ["tollgate_ops_token"]
    assert compose["secrets"]["tollgate_ops_token"] == {"environment": "TOLLGATE_OPS_TOKEN"}
    assert "credentials:" not in PROMETHEUS_CONFIG.read_text()
    web_env = compose["services"]["web"]["environment"]
    assert web_env["TOLLGATE_OPS_TOKEN"] == "${TOLLGATE_OPS_TOKEN:?set TOLLGATE_OPS_TOKEN in .env}"
    example = (BASE_DIR / ".env.example").read_text()
    assert re.search(r"^TOLLGATE_OPS_TOKEN=$", example, re.MULTILINE)


def test_prometheus_scrapes_the_worker_on_its_bind_address_without_a_token(compose: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    assert set(jobs) == {"tollgate", "tollgate-worker"}
    worker_job = jobs["tollgate-worker"]
    assert worker_job.get("metrics_path", "/metrics") == "/metrics"
    assert "authorization" not in worker_job  # the bind address is the protection: compose's network only
    # Every worker service, each container on its own (compose's DNS gives one address per container).
    workers = [name for name in compose["services"] if name == "worker" or name.startswith("worker-")]
    [port] = {compose["services"][name]["environment"]["TOLLGATE_METRICS_BIND"].rpartition(":")[2] for name in workers}
    [sd] = worker_job["dns_sd_configs"]
    assert sorted(sd["names"]) == sorted(workers) and len(workers) == 4
    assert (sd["type"], sd["port"]) == ("A", int(port)) and "static_configs" not in worker_job


def test_the_celery_panels_add_up_the_web_and_worker_jobs(dashboard: dict[str, Any]) -> None:
    # Task runs come from the worker's job, queue lengths from every job that reads the broker: with the Job choice
    # on All, the task panels sum over both jobs, and a value read from a shared source is not doubled.
    [job] = [variable for variable in dashboard["templating"]["list"] if variable["name"] == "job"]
    assert re.search(r'label_values\(\{__name__=~"tollgate_\.\+"\}, job\)', job["definition"])  # lists both jobs
    assert re.fullmatch(job["allValue"], "tollgate-worker") and re.fullmatch(job["allValue"], "tollgate")
    celery = [expr for expr in expressions(dashboard) if "tollgate_celery_" in expr]
    tasks = [expr for expr in celery if "tollgate_celery_task" in expr]
    assert len(tasks) == 3 and len(celery) == 4
    for expr in celery:
        assert re.search(r'\{job=~"\$job"\}', expr) and not re.search(r'job="', expr), expr
        assert not re.search(r"by \([^)]*\b(job|instance)\b", expr), expr  # one series per task, not per job
    for expr in expressions(dashboard):
        for gauge in ("tollgate_celery_queue_length", "tollgate_budget_holds_outstanding",
                      "tollgate_budgets_near_limit"):
            if gauge in expr:
                assert re.match(r"max\b", expr), f"{gauge} is read by every job from one source: max, not sum: {expr}"


def test_grafana_provisions_the_datasource_and_the_dashboard(compose: dict[str, Any]) -> None:
    service = compose["services"]["grafana"]
    mounts = bind_mounts(service)
    assert mounts["/etc/grafana/provisioning/datasources"] == GRAFANA_DATASOURCES.parent
    assert mounts["/etc/grafana/provisioning/dashboards"] == GRAFANA_DASHBOARDS.parent
    [source] = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["access"] == "proxy" and "prometheus" in compose["services"]
    [provider] = yaml.safe_load(GRAFANA_DASHBOARDS.read_text())["providers"]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    home = Path(service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert mounts[str(home.parent)] / home.name == DASHBOARD


def test_grafana_is_read_only_for_visitors_and_its_admin_password_comes_from_env(compose: dict[str, Any]) -> None:
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD in .env}"
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", (BASE_DIR / ".env.example").read_text(), re.MULTILINE)
