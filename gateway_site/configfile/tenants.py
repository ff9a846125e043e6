"""The tenant part of a plan: tenants (never deleted), their projects, and their budgets other than key budgets."""

from __future__ import annotations

import json
from typing import Any

from accounts.models import Project, Tenant
from billing.models import Budget

from . import ConfigError, export
from . import fields as f
from .plan import Planner, created, updated
from .rows import delete_project, delete_row, project_in_use, save

Scope = tuple[str, str, str, str, str, str]  # name, project, model, tag, end user, period


def plan_tenants(planner: Planner) -> None:
    current = {t.slug: t for t in Tenant.objects.all()}
    for data in planner.doc.get("tenants", []):
        slug, values = data["slug"], f.from_file(f.TENANT, data)
        row = current.pop(slug, None)
        lines = updated(f.from_row(f.TENANT, row), values) if row else created(f.entry(f.TENANT, values))

        def run(row: Tenant | None = row, slug: str = slug, values: dict[str, Any] = values) -> None:
            tenant = row or Tenant(slug=slug)
            f.assign(f.TENANT, tenant, values)
            save(tenant, f"tenant {slug}")  # saving a tenant drops its keys' cached records (accounts/apps.py)

        planner.write("~" if row else "+", "tenant", f"tenant {slug}", lines, run)
        plan_projects(planner, slug, row, data.get("projects", []))
        plan_budgets(planner, slug, row, data)
    if current:
        planner.plan.kept += len(current)
        if planner.prune:
            planner.plan.notes.append(f"{len(current)} tenant(s) not in the file kept: apply never deletes a tenant "
                                      "(set is_active: false to stop its keys)")


def plan_projects(planner: Planner, tenant: str, row: Tenant | None, items: list[dict[str, Any]]) -> None:
    current = {p.slug: p for p in Project.objects.filter(tenant=row)} if row else {}
    for data in items:
        slug, values = data["slug"], f.from_file(f.PROJECT, data)
        project = current.pop(slug, None)
        label = f"project {tenant}/{slug}"
        lines = updated(f.from_row(f.PROJECT, project), values) if project else created(f.entry(f.PROJECT, values))

        def run(project: Project | None = project, slug: str = slug, values: dict[str, Any] = values,
                label: str = label) -> None:
            target = project or Project(tenant=Tenant.objects.get(slug=tenant), slug=slug)
            f.assign(f.PROJECT, target, values)
            save(target, label)

        planner.write("~" if project else "+", "project", label, lines, run)
    for slug, project in current.items():
        planner.leftover("project", f"{tenant}/{slug}", lambda p=project: delete_project(p),
                         lambda p=project: project_in_use(p))


def scope_of(values: dict[str, Any]) -> Scope:
    return (values["name"], values["project"], values["model"], values["tag"], values["end_user"], values["period"])


def budget_label(tenant: str, scope: Scope) -> str:
    name, project, model, tag, end_user, period = scope
    parts = [f"budget {tenant} {period}"]
    parts += [f"{noun} {value}" for noun, value in (("project", project), ("model", model), ("tag", tag),
                                                   ("user", end_user)) if value]
    return ", ".join(parts) + (f" {json.dumps(name, ensure_ascii=False)}" if name else "")


def plan_budgets(planner: Planner, tenant: str, row: Tenant | None, data: dict[str, Any]) -> None:
    projects = {p["slug"] for p in data.get("projects", [])}
    existing = set(Project.objects.filter(tenant=row).values_list("slug", flat=True)) if row else set()
    current: dict[Scope, list[tuple[dict[str, Any], Budget]]] = {}
    if row:
        for budget in Budget.objects.filter(tenant=row, key__isnull=True).select_related("project"):
            values = export.budget_values(budget)
            current.setdefault(scope_of(values), []).append((values, budget))
    wanted: dict[Scope, list[dict[str, Any]]] = {}
    for index, item in enumerate(data.get("budgets", [])):
        values = f.from_file(f.BUDGET_SCOPE + f.BUDGET, item)
        if values["project"] and not planner.known(projects, existing, values["project"]):
            raise ConfigError(f"tenants[{tenant}].budgets[{index}].project: tenant {tenant} has no project "
                              f"{values['project']!r} in the file" + ("" if planner.prune else " or the database"))
        wanted.setdefault(scope_of(values), []).append(values)
    for scope in sorted(set(current) | set(wanted)):
        # Budgets alike in scope, period and name are told apart by their settings: pair them in that order.
        olds = sorted(current.get(scope, []), key=lambda pair: export.budget_order(export.budget_entry(pair[0])))
        news = sorted(wanted.get(scope, []), key=lambda values: export.budget_order(export.budget_entry(values)))
        for index in range(max(len(olds), len(news))):
            old, budget = olds[index] if index < len(olds) else (None, None)
            new = news[index] if index < len(news) else None
            if new is None:
                planner.leftover("budget", budget_label(tenant, scope)[len("budget "):],
                                 lambda b=budget: delete_row(b), lambda: None)
            else:
                write_budget(planner, tenant, scope, old, budget, new)


def write_budget(planner: Planner, tenant: str, scope: Scope, old: dict[str, Any] | None, budget: Budget | None,
                 new: dict[str, Any]) -> None:
    label = budget_label(tenant, scope)
    lines = updated(old, new) if old else created(export.budget_entry(new))

    def run() -> None:
        target = budget or Budget(tenant=Tenant.objects.get(slug=tenant), name=new["name"], model=new["model"],
                                  tag=new["tag"], end_user=new["end_user"], period=new["period"])
        if budget is None and new["project"]:
            target.project = Project.objects.get(tenant=target.tenant, slug=new["project"])
        f.assign(f.BUDGET, target, new)
        save(target, label)

    planner.write("~" if budget else "+", "budget", label, lines, run)
