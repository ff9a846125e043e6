"""The ledger: one row per /v1 request, written once."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, tzinfo

from django.db import models
from django.db.models import Max, Min, Q
from django.utils import timezone

from accounts.models import ApiKey, Project, Tenant

from .prices import Price


def _period_start(moment: datetime, kind: str) -> datetime:
    moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "year":
        return moment.replace(month=1, day=1)
    return moment.replace(day=1) if kind == "month" else moment


def _next_period(start: datetime, kind: str) -> datetime:
    if kind == "year":
        return start.replace(year=start.year + 1)
    if kind == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start + timedelta(days=1)


class UsageRecordQuerySet(models.QuerySet["UsageRecord"]):
    def for_tenant(self, tenant: Tenant) -> UsageRecordQuerySet:
        return self.filter(tenant=tenant)

    def datetimes(  # type: ignore[override]
        self, field_name: str, kind: str, order: str = "ASC", tzinfo: tzinfo | None = None
    ) -> list[datetime]:
        """The periods that have rows, as QuerySet.datetimes returns them, found without a full scan.

        The admin's date drill-down asks for these; Django's SELECT DISTINCT DATE_TRUNC reads every row
        of the ledger. Here the oldest and newest rows come from the created_at index, and each period in
        between is one EXISTS probe on that index (at most 31 at the day level).
        """
        if field_name != "created_at" or kind not in ("year", "month", "day"):
            return list(super().datetimes(field_name, kind, order, tzinfo))  # type: ignore[arg-type]
        bounds = self.aggregate(first=Min("created_at"), last=Max("created_at"))
        if bounds["first"] is None:
            return []
        zone = tzinfo or timezone.get_current_timezone()
        start, periods = _period_start(bounds["first"].astimezone(zone), kind), []
        while start <= bounds["last"]:
            after = _next_period(start, kind)
            if self.filter(created_at__gte=start, created_at__lt=after).exists():
                periods.append(start)
            start = after
        return periods if order == "ASC" else periods[::-1]


class UsageRecord(models.Model):
    """One row per /v1 request, written once and never updated: the ledger everything else is derived from."""

    class Source(models.TextChoices):
        PROVIDER = "provider"
        ESTIMATED = "estimated"
        CACHE = "cache"  # answered from the response cache: the provider was not asked

    class EndReason(models.TextChoices):
        COMPLETE = "complete"
        CLIENT_GONE = "client_gone"
        UPSTREAM_ERROR = "upstream_error"
        UPSTREAM_CUT = "upstream_cut"
        TIMEOUT = "timeout"
        REJECTED = "rejected"
        GATEWAY_ERROR = "gateway_error"  # Tollgate itself failed (a bug), not the provider
        GATEWAY_UNAVAILABLE = "gateway_unavailable"  # Redis or the database was down: refused, fail closed
        GATEWAY_LOST = "gateway_lost"  # the serving process died; closed from its journal by the recovery
        DRAINED = "drained"  # the serving process got SIGTERM and its grace period ended first (gateway_site/drain.py)

    class Endpoint(models.TextChoices):
        CHAT = "chat"
        COMPLETIONS = "completions"
        EMBEDDINGS = "embeddings"
        MESSAGES = "messages"  # Anthropic's Messages API, inbound
        RESPONSES = "responses"  # OpenAI's Responses API

    request_id = models.UUIDField(default=uuid.uuid4, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    key = models.ForeignKey(ApiKey, null=True, on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                help_text="The key's project when the request ran.")
    # The request's tags in billing.tags' stored form (",team:search,feature:summary,"), and its `user` field:
    # attribution only, bounded in length and count, never anything of the prompt.
    tags = models.CharField(max_length=1100, blank=True, default="", db_default="")
    end_user = models.CharField(max_length=256, blank=True, default="", db_default="")
    endpoint = models.CharField(max_length=16, choices=Endpoint.choices)
    public_model = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=64, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    # Prompt tokens written to the provider's prompt cache (part of prompt_tokens), priced at the cache-write price.
    cache_write_tokens = models.PositiveIntegerField(default=0, db_default=0)
    images = models.PositiveSmallIntegerField(default=0, db_default=0, help_text="Input images, for per-image prices.")
    usage_source = models.CharField(max_length=16, choices=Source.choices, default=Source.PROVIDER)
    end_reason = models.CharField(max_length=24, choices=EndReason.choices)
    error_code = models.CharField(max_length=64, blank=True)
    status_code = models.PositiveSmallIntegerField()
    latency_ms = models.PositiveIntegerField(default=0)
    ttfb_ms = models.PositiveIntegerField(null=True, blank=True)
    cost_picos = models.BigIntegerField(default=0, help_text="Pico-dollars (1 USD = 10**12), exact.")
    price = models.ForeignKey(Price, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    unpriced = models.BooleanField(default=False, help_text="The model had no price when the request ran.")
    gate = models.JSONField(default=dict, blank=True, help_text="Why the request was admitted or denied.")
    created_at = models.DateTimeField(default=timezone.now)
    # A batch line's row names its batch and line: one row per line, whatever replays or recoveries happen.
    # Database defaults too: rows inserted by SQL of their own, or by a process of the previous version during an
    # upgrade, still fit.
    batch_id = models.CharField(max_length=40, blank=True, default="", db_default="")
    custom_id = models.CharField(max_length=200, blank=True, default="", db_default="")

    objects = UsageRecordQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch_id", "custom_id"], condition=~Q(batch_id=""),
                                    name="usage_one_row_per_batch_line"),
        ]
        indexes = [
            # The tenant pages and rollups read a tenant's (or a key's) rows by time.
            models.Index(fields=["tenant", "created_at"], name="usage_tenant_time"),
            models.Index(fields=["key", "created_at"], name="usage_key_time"),
            models.Index(fields=["project", "created_at"], name="usage_project_time"),
            models.Index(fields=["created_at"], name="usage_time"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.public_model} {self.end_reason}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
