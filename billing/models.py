from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from accounts.models import ApiKey, Tenant


class UsageRecordQuerySet(models.QuerySet["UsageRecord"]):
    def for_tenant(self, tenant: Tenant) -> UsageRecordQuerySet:
        return self.filter(tenant=tenant)


class UsageRecord(models.Model):
    """One row per /v1 request, written once and never updated: the ledger everything else is derived from."""

    class Source(models.TextChoices):
        PROVIDER = "provider"
        ESTIMATED = "estimated"

    class EndReason(models.TextChoices):
        COMPLETE = "complete"
        CLIENT_GONE = "client_gone"
        UPSTREAM_ERROR = "upstream_error"
        UPSTREAM_CUT = "upstream_cut"
        TIMEOUT = "timeout"
        REJECTED = "rejected"

    request_id = models.UUIDField(default=uuid.uuid4, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    key = models.ForeignKey(ApiKey, null=True, on_delete=models.PROTECT, related_name="+")
    endpoint = models.CharField(max_length=16)
    public_model = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=64, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    usage_source = models.CharField(max_length=16, choices=Source.choices, default=Source.PROVIDER)
    end_reason = models.CharField(max_length=16, choices=EndReason.choices)
    error_code = models.CharField(max_length=64, blank=True)
    status_code = models.PositiveSmallIntegerField()
    latency_ms = models.PositiveIntegerField(default=0)
    ttfb_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = UsageRecordQuerySet.as_manager()

    class Meta:
        indexes = [
            # The tenant pages and rollups read a tenant's (or a key's) rows by time.
            models.Index(fields=["tenant", "created_at"], name="usage_tenant_time"),
            models.Index(fields=["key", "created_at"], name="usage_key_time"),
            models.Index(fields=["created_at"], name="usage_time"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.public_model} {self.end_reason}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
