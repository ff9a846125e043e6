"""What applying a document would change: one Change per object to create, update or delete, in a safe order.

Each Change carries the function that makes it, so the dry run and the real run do exactly the same thing.
Objects are matched by natural key; a budget by its scope, period and name (budgets alike in all of those are
paired in order of their settings). Nothing missing from the file is deleted unless ``prune`` is set, and tenants
never are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from billing.models import Price
from proxy.models import Deployment, ModelRoute, Provider

from . import ConfigError
from . import fields as f
from .rows import credential_state, delete_row, price_in_use, save, set_credential

# Deletions run last, the most dependent objects first (deployments before their providers).
RANK = {"provider": 0, "route": 1, "deployment": 2, "price": 3, "tenant": 4, "project": 5, "budget": 6}


@dataclass
class Change:
    action: str  # "+" create, "~" update, "-" delete
    noun: str
    label: str
    lines: list[str]
    run: Callable[[], None]


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    kept: int = 0  # objects in the database but not in the file, left alone without --prune
    notes: list[str] = field(default_factory=list)


def show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def created(values: dict[str, Any]) -> list[str]:
    return [f"{name}: {show(value)}" for name, value in values.items()]


def updated(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{name}: {show(old[name])} → {show(new[name])}" for name in new if old[name] != new[name]]


class Planner:
    def __init__(self, document: dict[str, Any], *, prune: bool, environ: Mapping[str, str]) -> None:
        self.doc, self.prune, self.environ = document, prune, environ
        self.writes: list[Change] = []
        self.deletes: list[Change] = []
        self.plan = Plan()

    def write(self, action: str, noun: str, label: str, lines: list[str], run: Callable[[], None]) -> None:
        if action == "+" or lines:
            self.writes.append(Change(action, noun, label, lines, run))

    def leftover(self, noun: str, label: str, run: Callable[[], None], check: Callable[[], str | None]) -> None:
        if not self.prune:
            self.plan.kept += 1
            return
        if refusal := check():
            raise ConfigError(f"{noun} {label} is not in the file, but --prune cannot delete it: {refusal}")
        self.deletes.append(Change("-", noun, f"{noun} {label}", [], run))

    def known(self, in_file: set[str], in_database: set[str], name: str) -> bool:
        return name in in_file or (not self.prune and name in in_database)

    def result(self) -> Plan:
        self.plan.changes = self.writes + sorted(self.deletes, key=lambda c: -RANK[c.noun])
        return self.plan

    def providers(self) -> None:
        current = {p.name: p for p in Provider.objects.all()}
        for data in self.doc.get("providers", []):
            name, values = data["name"], f.from_file(f.PROVIDER, data)
            wanted = self.wanted_credential(data)
            row = current.pop(name, None)
            old_credential = credential_state(row) if row else ("none", "", "none")
            lines = updated(f.from_row(f.PROVIDER, row), values) if row else created(f.entry(f.PROVIDER, values))
            if wanted[:2] != old_credential[:2]:
                lines.append(f"credential: {old_credential[2]} → {wanted[2]}" if row else f"credential: {wanted[2]}")

            def run(row: Provider | None = row, name: str = name, values: dict[str, Any] = values,
                    wanted: tuple[str, str, str] = wanted) -> None:
                provider = row or Provider(name=name)
                f.assign(f.PROVIDER, provider, values)
                set_credential(provider, wanted)
                save(provider, f"provider {name}")

            self.write("~" if row else "+", "provider", f"provider {name}", lines, run)
        for name, row in current.items():
            self.leftover("provider", name, lambda row=row: delete_row(row), lambda: None)

    def wanted_credential(self, data: dict[str, Any]) -> tuple[str, str, str]:
        """(kind, value, description): the key stored from an environment variable, read at request time, or none."""
        if "credential" in data:
            variable = data["credential"][2:-1]
            if not self.environ.get(variable):
                raise ConfigError(f"providers[{data['name']}].credential: the environment variable {variable} is not "
                                  "set; apply stores its value encrypted (the file holds only its name)")
            return "stored", self.environ[variable], f"${{{variable}}} (stored encrypted)"
        if data.get("credential_env"):
            return "env", data["credential_env"], f"read from ${data['credential_env']} at request time"
        return "none", "", "none"

    def routes(self) -> None:
        current = {r.name: r for r in ModelRoute.objects.all()}
        deployments: dict[tuple[str, str, str], list[Deployment]] = {}
        for d in Deployment.objects.select_related("route", "provider").order_by("pk"):
            deployments.setdefault((d.route.name, d.provider.name, d.upstream_model), []).append(d)
        file_providers = {p["name"] for p in self.doc.get("providers", [])}
        db_providers = set(Provider.objects.values_list("name", flat=True))
        routed = self.routed_names(current)
        for data in self.doc.get("routes", []):
            name, values = data["name"], f.from_file(f.ROUTE, data)
            self.check_fallbacks(data, routed)
            row = current.pop(name, None)
            lines = updated(f.from_row(f.ROUTE, row), values) if row else created(f.entry(f.ROUTE, values))

            def run(row: ModelRoute | None = row, name: str = name, values: dict[str, Any] = values) -> None:
                route = row or ModelRoute(name=name)
                f.assign(f.ROUTE, route, values)
                save(route, f"route {name}")

            self.write("~" if row else "+", "route", f"route {name}", lines, run)
            for index, dep in enumerate(data.get("deployments", [])):
                if not self.known(file_providers, db_providers, dep["provider"]):
                    raise ConfigError(f"routes[{name}].deployments[{index}].provider: no provider named "
                                      f"{dep['provider']!r} in the file" + ("" if self.prune else " or the database"))
                self.deployment(name, dep, deployments)
        for _, rows in sorted(deployments.items()):
            for row in rows:
                label = f"{row.route.name} → {row.provider.name}/{row.upstream_model}"
                self.leftover("deployment", label, lambda row=row: delete_row(row), lambda: None)
        for name, row in current.items():
            self.leftover("route", name, lambda row=row: delete_row(row), lambda: None)

    def deployment(self, route: str, data: dict[str, Any],
                   current: dict[tuple[str, str, str], list[Deployment]]) -> None:
        provider, upstream = data["provider"], data["upstream_model"]
        values = f.from_file(f.DEPLOYMENT, data)
        rows = current.get((route, provider, upstream), [])
        row = rows.pop(0) if rows else None
        lines = updated(f.from_row(f.DEPLOYMENT, row), values) if row else created(f.entry(f.DEPLOYMENT, values))

        def run(row: Deployment | None = row) -> None:
            deployment = row or Deployment(route=ModelRoute.objects.get(name=route),
                                           provider=Provider.objects.get(name=provider), upstream_model=upstream)
            f.assign(f.DEPLOYMENT, deployment, values)
            save(deployment, f"deployment {route} → {provider}/{upstream}")

        self.write("~" if row else "+", "deployment", f"deployment {route} → {provider}/{upstream}", lines, run)

    def routed_names(self, current: dict[str, ModelRoute]) -> set[str]:
        """Every public name a route will answer to after the apply: the file's routes, and the kept ones."""
        names: set[str] = set()
        for data in self.doc.get("routes", []):
            names |= set(ModelRoute(name=data["name"], aliases=data.get("aliases", []),
                                    strip_prefix=data.get("strip_prefix", "")).public_names())
        in_file = {data["name"] for data in self.doc.get("routes", [])}
        for name, row in current.items():
            if not self.prune and name not in in_file:
                names |= set(row.public_names())
        return names

    def check_fallbacks(self, data: dict[str, Any], routed: set[str]) -> None:
        own = set(ModelRoute(name=data["name"], aliases=data.get("aliases", []),
                             strip_prefix=data.get("strip_prefix", "")).public_names())
        for key in ("fallbacks", "context_window_fallbacks"):
            names = data.get(key, [])
            if itself := [n for n in names if n in own]:
                raise ConfigError(f"routes[{data['name']}].{key}: a route cannot fall back to itself: "
                                  f"{', '.join(itself)}")
            if unknown := [n for n in names if n not in routed]:
                raise ConfigError(f"routes[{data['name']}].{key}: no route answers to {', '.join(unknown)}")

    def prices(self) -> None:
        current = {(p.model, p.provider.name if p.provider else "", p.effective_from.isoformat()): p
                   for p in Price.objects.select_related("provider")}
        file_providers = {p["name"] for p in self.doc.get("providers", [])}
        db_providers = set(Provider.objects.values_list("name", flat=True))
        for index, data in enumerate(self.doc.get("prices", [])):
            identity = (data["model"], data.get("provider", ""), data["effective_from"])
            label = price_label(*identity)
            if identity[1] and not self.known(file_providers, db_providers, identity[1]):
                raise ConfigError(f"prices[{index}].provider: no provider named {identity[1]!r} in the file"
                                  + ("" if self.prune else " or the database"))
            try:
                day = date.fromisoformat(identity[2])
            except ValueError:
                raise ConfigError(f"prices[{index}].effective_from: {identity[2]!r} is not a date") from None
            values = f.from_file(f.PRICE, data)
            row = current.pop(identity, None)
            lines = updated(f.from_row(f.PRICE, row), values) if row else created(f.entry(f.PRICE, values))

            def run(row: Price | None = row, identity: tuple[str, str, str] = identity, day: date = day,
                    values: dict[str, Any] = values, label: str = label) -> None:
                provider = Provider.objects.get(name=identity[1]) if identity[1] else None
                price = row or Price(model=identity[0], provider=provider, effective_from=day)
                f.assign(f.PRICE, price, values)
                save(price, label)

            self.write("~" if row else "+", "price", label, lines, run)
        for identity, row in current.items():
            self.leftover("price", price_label(*identity)[len("price "):], lambda row=row: delete_row(row),
                          lambda row=row: price_in_use(row))


def price_label(model: str, provider: str, day: str) -> str:
    return f"price {model}" + (f" on {provider}" if provider else "") + f" from {day}"
