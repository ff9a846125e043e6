"""Step three: a public model name becomes an ordered list of Targets (first choice, then fallbacks).

The routing table is small and read on every request, so each process keeps it in memory: saving a
provider, route or deployment drops this process's copy at once and every other process's within a second
(gateway_site/changes.py); TOLLGATE_ROUTES_CACHE_SECONDS is the backstop.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings

from accounts.keys import Caller

from . import breaker, outages, providers
from .db import db_step
from .errors import ModelNotFound, PermissionDenied
from .providers.base import CachePolicy, Target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    target: Target
    weight: int


@dataclass(frozen=True)
class Policy:
    """A route's retry and fallback settings (ModelRoute); None means the global default."""

    max_attempts: int | None = None
    retry_budget_seconds: int | None = None
    fallbacks: tuple[str, ...] = ()
    context_window_fallbacks: tuple[str, ...] = ()


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Table:
    routes: dict[str, tuple[Choice, ...]]  # every accepted public name -> its deployments
    models: tuple[str, ...]  # canonical public names, for /v1/models
    loaded_at: float
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # canonical name -> every public name of its route
    policies: dict[str, Policy] = field(default_factory=dict)  # canonical name -> its retry settings, unless defaults

    def names_of(self, model: str) -> tuple[str, ...]:
        """Every name of the model's route, which an allow-list may name it by (its name, aliases, prefixed names)."""
        choices = self.routes.get(model)
        canonical = choices[0].target.public_model if choices else model
        return self.names.get(canonical, (canonical, model))


_table: Table | None = None


def load_table() -> Table:
    """Return a fresh routing table read from the database (active rows only)."""
    from .models import Deployment, ModelRoute

    routes: dict[str, list[Choice]] = {}
    models: list[str] = []
    names: dict[str, tuple[str, ...]] = {}
    policies: dict[str, Policy] = {}
    deployments = Deployment.objects.filter(is_active=True, route__is_active=True, provider__is_active=True)
    by_route: dict[int, list[Deployment]] = {}
    for deployment in deployments.select_related("provider"):
        by_route.setdefault(deployment.route_id, []).append(deployment)
    for route in ModelRoute.objects.filter(is_active=True, pk__in=by_route.keys()):
        choices = []
        cache = CachePolicy(enabled=route.cache_enabled, ttl_seconds=route.cache_ttl_seconds, shared=route.cache_shared,
                            per_user=route.cache_per_user, sampled=route.cache_sampled,
                            free=route.cache_cost == ModelRoute.CacheCost.FREE)
        for deployment in by_route[route.pk]:
            provider = deployment.provider
            try:
                api_key = provider.credential()
            except ValueError:
                logger.error("provider %s: stored credential cannot be decrypted; its deployments are skipped", provider.name)
                continue
            quirks = provider.quirks()  # Azure's api-version and Bedrock's region travel in the options too
            target = Target(
                public_model=route.name, deployment_id=deployment.pk, provider_name=provider.name, kind=provider.kind,
                base_url=provider.resolved_base_url(), upstream_model=deployment.upstream_model, api_key=api_key,
                stream_usage=bool(quirks.get("stream_usage", True)), options=quirks, cache=cache,
            )
            if provider.kind in providers.KINDS:
                # Imported here, in the database thread, not by the first request on the event loop (Bedrock's
                # botocore takes ~0.4 s to import).
                providers.get(provider.kind)
            choices.append(Choice(target=target, weight=deployment.weight))
        if choices:
            models.append(route.name)
            names[route.name] = tuple(route.public_names())
            if (policy := policy_of(route)) != DEFAULT_POLICY:
                policies[route.name] = policy
            for name in route.public_names():
                routes[name] = [*routes.get(name, []), *choices] if name != route.name else choices
    return Table(
        routes={name: tuple(choices) for name, choices in routes.items()},
        models=tuple(sorted(models)),
        loaded_at=time.monotonic(),
        names=names,
        policies=policies,
    )


def policy_of(route: Any) -> Policy:
    def names(value: object) -> tuple[str, ...]:
        return tuple(n for n in value if isinstance(n, str) and n) if isinstance(value, list) else ()

    return Policy(route.max_attempts, route.retry_budget_seconds, names(route.fallbacks),
                  names(route.context_window_fallbacks))


aload_table = db_step(load_table)


async def table() -> Table:
    """Return this process's routing table, reloading it when older than the cache time."""
    global _table
    current = _table
    if current is None or time.monotonic() - current.loaded_at >= settings.TOLLGATE_ROUTES_CACHE_SECONDS:
        try:
            current = _table = await aload_table()
        except Exception as e:
            if current is None or outages.dependency_of(e) is None:
                raise
            # The database is down: keep routing with the last table, and try again in a second.
            outages.note("database", e)
            current = _table = replace(current, loaded_at=time.monotonic() - settings.TOLLGATE_ROUTES_CACHE_SECONDS + 1.0)
    return current


def invalidate() -> None:
    global _table
    _table = None


async def route(caller: Caller, model: str) -> list[Target]:
    """Return the targets to try for the caller's model, best first. Raises ModelNotFound or PermissionDenied."""
    current = await table()
    choices = current.routes.get(model)
    if not choices:
        raise ModelNotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")
    # An allow-list names a route by any of its names: the tenant's list first, then the key's, which narrows it.
    refused_by = caller.refused_by(model, *current.names_of(model))
    if refused_by == "tenant":
        raise PermissionDenied(f"Your tenant is not allowed to use the model '{model}'. Ask your Tollgate operator.",
                               param="model", code="model_not_allowed")
    if refused_by == "key":
        raise PermissionDenied(f"This API key is not allowed to use the model '{model}'.", param="model", code="model_not_allowed")
    return order(choices)


@dataclass(frozen=True)
class Group:
    """One route's deployments in a request's plan, best first, with the route's retry settings."""

    model: str
    targets: tuple[Target, ...]
    attempts: int
    budget_seconds: float


@dataclass(frozen=True)
class Plan:
    """Where a request may be served: its route, then its fallbacks in order; the context-window fallbacks instead
    once a model says the prompt is too long."""

    groups: tuple[Group, ...]
    context: tuple[Group, ...] = ()

    def targets(self) -> list[Target]:
        """Every deployment that might serve the request (the budget gate holds the dearest one's worst case)."""
        return [target for group in (*self.groups, *self.context) for target in group.targets]

    def without(self, deployment_ids: set[int]) -> Plan:
        """This plan less the deployments named; a group left with none is dropped."""
        def keep(groups: tuple[Group, ...]) -> tuple[Group, ...]:
            kept = (replace(g, targets=tuple(t for t in g.targets if t.deployment_id not in deployment_ids))
                    for g in groups)
            return tuple(g for g in kept if g.targets)

        return Plan(keep(self.groups), keep(self.context))


async def plan(caller: Caller, targets: list[Target]) -> Plan:
    """Return the plan for the targets route() gave the caller; fallbacks it may not use are left out."""
    current = await table()
    model = targets[0].public_model
    policy = current.policies.get(model, DEFAULT_POLICY)
    return Plan((group_of(model, tuple(targets), policy), *fallback_groups(current, caller, model, policy.fallbacks)),
                fallback_groups(current, caller, model, policy.context_window_fallbacks))


def group_of(model: str, targets: tuple[Target, ...], policy: Policy) -> Group:
    return Group(model, targets, policy.max_attempts or settings.TOLLGATE_RETRY_ATTEMPTS,
                 float(policy.retry_budget_seconds or settings.TOLLGATE_RETRY_BUDGET_SECONDS))


def fallback_groups(current: Table, caller: Caller, model: str, names: tuple[str, ...]) -> tuple[Group, ...]:
    """The routes named, in order: each once, never the model itself, and only those both allow-lists admit."""
    groups, seen = [], {model}
    for name in names:
        choices = current.routes.get(name)
        if not choices:
            continue  # no such route, or none of its deployments is active
        canonical = choices[0].target.public_model
        if canonical in seen or caller.refused_by(name, *current.names_of(name)) is not None:
            continue
        seen.add(canonical)
        groups.append(group_of(canonical, by_weight(choices), current.policies.get(canonical, DEFAULT_POLICY)))
    return tuple(groups)


def by_weight(choices: tuple[Choice, ...]) -> tuple[Target, ...]:
    """The deployments, a weighted pick first, without asking their health: asking lets a half-open breaker's one
    probe through, so proxy/retries.py asks only of the deployment it is about to try."""
    first = random.choices(choices, weights=[c.weight for c in choices])[0]
    return (first.target, *(c.target for c in choices if c is not first))


def order(choices: tuple[Choice, ...]) -> list[Target]:
    healthy = [c for c in choices if is_healthy(c.target.deployment_id)]
    pool = healthy or list(choices)  # all tripped: try them anyway rather than fail without asking
    current = breaker.get()
    # A half-open deployment that let this request through made it the fleet's one probe: send it there first, or
    # nobody probes that deployment until the claim lapses (another cool-down). Nothing to look at when all are closed.
    probes = [c for c in healthy if current.probing(c.target.deployment_id)] if current.mirror else []
    first = probes[0] if probes else random.choices(pool, weights=[c.weight for c in pool])[0]
    rest = [c for c in pool if c is not first] + [c for c in choices if c not in pool]
    return [first.target, *(c.target for c in rest)]


def is_healthy(deployment_id: int) -> bool:
    """Whether the deployment's circuit breaker lets a request through (proxy/breaker.py; no I/O)."""
    return breaker.get().is_healthy(deployment_id)


def report(target: Target, *, ok: bool) -> None:
    """Tell the circuit breaker how an attempt on the target went (a success on a closed breaker costs nothing)."""
    breaker.get().report(target.deployment_id, ok=ok)
