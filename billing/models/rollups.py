"""Hourly and daily usage totals derived from the ledger, and how far they have read it."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Value
from django.db.models.functions import Coalesce

from accounts.models import ApiKey, Project, Tenant


class UsageRollup(models.Model):
    """Usage of one tenant, key and model in one UTC hour or day, derived from the ledger by billing.rollups.

    Rebuilt whole whenever its window receives rows, so running a window again gives the same rows.
    """

    class Granularity(models.TextChoices):
        HOUR = "hour"
        DAY = "day"

    granularity = models.CharField(max_length=4, choices=Granularity.choices)
    bucket = models.DateTimeField(help_text="Start of the hour or day, UTC.")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    model = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=64, blank=True, help_text="Blank for requests that reached no provider.")
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0, help_text="Upstream errors, cuts and timeouts.")
    rejected = models.PositiveIntegerField(default=0, help_text="Refused by a budget, a rate limit or validation.")
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cost_picos = models.BigIntegerField(default=0, help_text="Pico-dollars (1 USD = 10**12), the exact sum of the rows.")
    latency_p50_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Of requests that were not rejected.")
    latency_p95_ms = models.PositiveIntegerField(null=True, blank=True)
    latency_p99_ms = models.PositiveIntegerField(null=True, blank=True)
    ttfb_p50_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Time to first byte, of requests that had one.")
    ttfb_p95_ms = models.PositiveIntegerField(null=True, blank=True)
    sketch = models.JSONField(null=True, blank=True, editable=False,
                              help_text="Hour rollups only: latency and first-byte counts per logarithmic bin "
                                        "(billing/sketches.py), merged into the day's percentiles.")

    class Meta:
        constraints = [
            # One row per group; a missing key or project counts as 0, since NULLs never collide in a unique index.
            models.UniqueConstraint(F("granularity"), F("bucket"), F("tenant"), Coalesce(F("key"), Value(0)),
                                    Coalesce(F("project"), Value(0)), F("model"), F("provider"),
                                    name="rollup_unique_group"),
        ]
        indexes = [models.Index(fields=["tenant", "granularity", "bucket"], name="rollup_tenant_bucket")]

    def __str__(self) -> str:
        return f"{self.granularity} {self.bucket:%Y-%m-%d %H:%M} {self.model}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RollupState(models.Model):
    """How far the rollups have read the ledger, and how far the ledger has been pruned."""

    name = models.CharField(max_length=32, unique=True)
    last_record_id = models.BigIntegerField(default=0, help_text="The newest ledger row rolled up.")
    pruned_before = models.DateTimeField(null=True, blank=True, help_text="Ledger rows older than this are deleted; "
                                         "their spend is in the day rollups.")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name
