"""Step two: the gate between a known caller and the provider. Rate limits and budgets plug in here."""

from __future__ import annotations

from accounts.keys import Caller

from .providers.base import ApiRequest


async def check_limits(caller: Caller, body: ApiRequest) -> None:
    """Admit the request or raise a GatewayError. Nothing is limited yet: every caller is admitted."""
    return None
