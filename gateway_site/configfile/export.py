"""The database as a configuration document: plain data, natural keys, a fixed order, no secret values."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from accounts.models import Project, Tenant
from billing.models import Budget, Price
from proxy.models import Deployment, ModelRoute, Provider

from . import fields as f

HEADER = ("# Tollgate configuration: `manage.py tollgate apply FILE` shows what it would change, `--yes` applies it.\n"
          "# Provider keys appear only as environment-variable references. API keys, members and webhook secrets\n"
          "# are not part of it: they are issued in each environment.\n")


@dataclass
class Exported:
    document: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def provider_entry(provider: Provider) -> dict[str, Any]:
    out = f.entry(f.PROVIDER, f.from_row(f.PROVIDER, provider), first={"name": provider.name})
    if provider.credential_encrypted:
        out["credential"] = "${" + f.env_name(provider.name) + "}"
    elif provider.credential_env:
        out["credential_env"] = provider.credential_env
    return out


def route_entry(route: ModelRoute) -> dict[str, Any]:
    return f.entry(f.ROUTE, f.from_row(f.ROUTE, route), first={"name": route.name})


def deployment_entry(deployment: Deployment) -> dict[str, Any]:
    first = {"provider": deployment.provider.name, "upstream_model": deployment.upstream_model}
    return f.entry(f.DEPLOYMENT, f.from_row(f.DEPLOYMENT, deployment), first=first)


def price_identity(model: str, provider: str, effective_from: str) -> dict[str, Any]:
    return {"model": model, **({"provider": provider} if provider else {}), "effective_from": effective_from}


def price_entry(price: Price) -> dict[str, Any]:
    first = price_identity(price.model, price.provider.name if price.provider else "", price.effective_from.isoformat())
    return f.entry(f.PRICE, f.from_row(f.PRICE, price), first=first)


def tenant_entry(tenant: Tenant) -> dict[str, Any]:
    return f.entry(f.TENANT, f.from_row(f.TENANT, tenant), first={"slug": tenant.slug})


def project_entry(project: Project) -> dict[str, Any]:
    return f.entry(f.PROJECT, f.from_row(f.PROJECT, project), first={"slug": project.slug})


def budget_values(budget: Budget) -> dict[str, Any]:
    scope = {"name": budget.name, "project": budget.project.slug if budget.project else "", "model": budget.model,
             "tag": budget.tag, "end_user": budget.end_user, "period": budget.period}
    return {**scope, **f.from_row(f.BUDGET, budget)}


def budget_entry(values: dict[str, Any]) -> dict[str, Any]:
    return f.entry(f.BUDGET_SCOPE + f.BUDGET, values)


def deployment_order(entry: dict[str, Any]) -> tuple[str, str, str]:
    return entry["provider"], entry["upstream_model"], json.dumps(entry, sort_keys=True)


def budget_order(entry: dict[str, Any]) -> tuple[Any, ...]:
    """Budgets sort by scope, then by everything else, so budgets of one scope keep one order."""
    values = {**{fl.name: fl.default for fl in f.BUDGET_SCOPE}, **entry}
    return (*(str(values[fl.name]) for fl in f.BUDGET_SCOPE), json.dumps(entry, sort_keys=True))


def export() -> Exported:
    """Return the operator configuration as a document, with notes on what was left out and why."""
    notes: list[str] = []
    deployments: dict[int, list[dict[str, Any]]] = {}
    for deployment in Deployment.objects.select_related("provider"):
        deployments.setdefault(deployment.route_id, []).append(deployment_entry(deployment))
    routes = []
    # Sorted here, not by the database: collations differ, and the same data must give the same text everywhere.
    for route in sorted(ModelRoute.objects.all(), key=lambda r: r.name):
        out = route_entry(route)
        if deployments.get(route.pk):
            out["deployments"] = sorted(deployments[route.pk], key=deployment_order)
        routes.append(out)
    prices = sorted((price_entry(p) for p in Price.objects.select_related("provider")),
                    key=lambda p: (p["model"], p.get("provider", ""), p["effective_from"]))
    tenants = []
    for tenant in sorted(Tenant.objects.prefetch_related("projects"), key=lambda t: t.slug):
        out = tenant_entry(tenant)
        projects = sorted((project_entry(p) for p in tenant.projects.all()), key=lambda p: p["slug"])
        budgets = Budget.objects.filter(tenant=tenant).select_related("project")
        if skipped := budgets.filter(key__isnull=False).count():
            notes.append(f"tenant {tenant.slug}: {skipped} key budget(s) left out: API keys are issued per "
                         "environment, so a budget on one cannot move with the file")
        scoped = sorted((budget_entry(budget_values(b)) for b in budgets.filter(key__isnull=True)), key=budget_order)
        if projects:
            out["projects"] = projects
        if scoped:
            out["budgets"] = scoped
        tenants.append(out)
    providers = [provider_entry(p) for p in sorted(Provider.objects.all(), key=lambda p: p.name)]
    document = {"version": 1, "providers": providers,
                "routes": routes, "prices": prices, "tenants": tenants}
    return Exported(document, notes)


def dump(document: dict[str, Any]) -> str:
    """The document as YAML, always the same text for the same data."""
    return HEADER + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False, width=120)
