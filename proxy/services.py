from __future__ import annotations

from .models import Deployment, ModelRoute, Provider


def ensure_demo_route() -> ModelRoute:
    """Make sure the built-in `demo` model is routed. Returns its route; idempotent."""
    provider, _ = Provider.objects.get_or_create(name="demo", defaults={"kind": Provider.Kind.DEMO})
    route, _ = ModelRoute.objects.get_or_create(name="demo")
    Deployment.objects.get_or_create(route=route, provider=provider, defaults={"upstream_model": "demo"})
    return route
