"""The live usage tail: a WebSocket per signed-in member, joined to their current tenant's group."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts.models import Membership
from accounts.tenancy import SESSION_KEY

from . import live


@database_sync_to_async
def tenant_of(user: Any, session: Any) -> int | None:
    if not user.is_authenticated:
        return None
    mine = list(Membership.objects.filter(user=user, tenant__is_active=True).order_by("tenant__name")
                .values_list("tenant_id", flat=True))
    chosen = session.get(SESSION_KEY) if session is not None else None
    return chosen if chosen in mine else (mine[0] if mine else None)


class LiveUsageConsumer(AsyncJsonWebsocketConsumer):
    tenant_group: str | None = None
    renewing: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        tenant_id = await tenant_of(self.scope.get("user"), self.scope.get("session"))
        if tenant_id is None:
            await self.close(code=4403)
            return
        self.tenant_group = live.group(tenant_id)
        await self.channel_layer.group_add(self.tenant_group, self.channel_name)
        await live.listen(tenant_id)
        self.renewing = asyncio.ensure_future(self.renew(tenant_id))
        await self.accept()

    async def renew(self, tenant_id: int) -> None:
        """Keep the tenant registered as watched while this page is open."""
        while True:
            await asyncio.sleep(live.LEASE / 3)
            with contextlib.suppress(Exception):
                await live.listen(tenant_id)

    async def disconnect(self, code: int) -> None:
        if self.renewing is not None:
            self.renewing.cancel()
        if self.tenant_group:
            await self.channel_layer.group_discard(self.tenant_group, self.channel_name)

    async def usage_rows(self, message: dict[str, Any]) -> None:
        await self.send_json({"rows": message["rows"]})
