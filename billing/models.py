from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, tzinfo
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Max, Min, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import ApiKey, Project, Tenant

MICROS = Decimal(1_000_000)  # budgets and holds are kept in integer micro-dollars (1 USD = 1,000,000)
PICOS = Decimal(10**12)  # the ledger is kept in integer pico-dollars (1 USD = 10**12)
PICOS_PER_MICRO = 10**6
PICO = Decimal("0.000000000001")


def to_micros(dollars: Decimal) -> int:
    return int((dollars * MICROS).to_integral_value(rounding=ROUND_HALF_UP))


def micros_to_dollars(micros: int) -> Decimal:
    return (Decimal(micros) / MICROS).quantize(Decimal("0.000001"))


def picos_to_dollars(picos: int) -> Decimal:
    """Exact: every pico-dollar is kept (twelve decimal places)."""
    return (Decimal(picos) / PICOS).quantize(PICO)


def picos_to_micros_up(picos: int) -> int:
    """Whole micro-dollars, a started one counted whole: what a budget compares against its limit."""
    return -(-picos // PICOS_PER_MICRO)


class Price(models.Model):
    """What a model costs from a date on. A price change is a new row, so past costs never change.

    Matched by deployment (provider + upstream model name) first, then by public model name. Amounts are
    US dollars per million tokens with six decimals, so one token costs a whole number of pico-dollars
    (10**-12 USD) and ``Price.cost_picos`` is exact: no row is ever rounded.
    """

    model = models.CharField(max_length=200, help_text="The public model name, or the upstream model name when a provider is set.")
    provider = models.ForeignKey("proxy.Provider", null=True, blank=True, on_delete=models.CASCADE, related_name="prices",
                                 help_text="Set it to price one provider's deployments of the model.")
    effective_from = models.DateField(default=date.today, help_text="Applies to requests from this day (UTC) on.")
    input_per_million = models.DecimalField(max_digits=14, decimal_places=6, help_text="USD per million prompt tokens.")
    output_per_million = models.DecimalField(max_digits=14, decimal_places=6, help_text="USD per million completion tokens.")
    cached_input_per_million = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True,
        help_text="USD per million cached prompt tokens; empty means the input price.")
    cache_write_per_million = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True,
        help_text="USD per million prompt tokens written to the provider's prompt cache (Anthropic charges more for "
                  "these); empty means the input price.")
    per_image = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal(0), db_default=Decimal(0),
                                    help_text="USD per input image, for providers that charge so.")
    per_request = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal(0),
                                      help_text="USD per request, for providers that charge so.")
    batch_discount_percent = models.DecimalField(
        max_digits=5, decimal_places=2, default=Decimal(0), db_default=Decimal(0),
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(100))],
        help_text="Discount on batch lines' cost, e.g. 50 for half price. A route may set its own.")
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "provider", "effective_from"], condition=Q(provider__isnull=False),
                                    name="price_unique_per_deployment_day"),
            models.UniqueConstraint(fields=["model", "effective_from"], condition=Q(provider__isnull=True),
                                    name="price_unique_per_model_day"),
        ]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from}"

    def cost_picos(self, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                   cache_write_tokens: int = 0, images: int = 0, requests: int = 1) -> int:
        """Exact cost in pico-dollars. Cached tokens (read from the prompt cache) and cache writes are both part of
        prompt_tokens: reads at the cached price, writes at the cache-write price, the rest at the input price."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        written = min(max(cache_write_tokens, 0), prompt_tokens - cached)
        micros = ((prompt_tokens - cached - written) * self.input_per_million + cached * self.cached_price()
                  + written * self.cache_write_price() + completion_tokens * self.output_per_million
                  + (requests * self.per_request + max(images, 0) * (self.per_image or 0)) * MICROS)
        # Integral for prices of six decimals (the column's scale); half up only for a price set with more by hand.
        return int((micros * PICOS_PER_MICRO).to_integral_value(rounding=ROUND_HALF_UP))

    def cost_micros(self, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                    cache_write_tokens: int = 0, images: int = 0, requests: int = 1) -> int:
        """Cost in micro-dollars rounded up: never less than the exact cost."""
        return picos_to_micros_up(self.cost_picos(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                                  cached_tokens=cached_tokens, cache_write_tokens=cache_write_tokens,
                                                  images=images, requests=requests))

    def worst_micros(self, *, prompt_tokens: int, completion_tokens: int, images: int = 0) -> int:
        """What a budget holds for a request: the most it can cost, in micro-dollars rounded up. Which prompt tokens
        the provider reads from or writes to its cache is known only afterwards, so every prompt token is priced at
        the dearest of the input, cached and cache-write prices (a prompt written whole to the cache costs 1.25 or
        2 times the input price at Anthropic)."""
        dearest = max(self.input_per_million, self.cached_price(), self.cache_write_price())
        micros = (prompt_tokens * dearest + completion_tokens * self.output_per_million
                  + (self.per_request + max(images, 0) * (self.per_image or 0)) * MICROS)
        return picos_to_micros_up(int((micros * PICOS_PER_MICRO).to_integral_value(rounding=ROUND_CEILING)))

    def cached_price(self) -> Decimal:
        return self.input_per_million if self.cached_input_per_million is None else self.cached_input_per_million

    def cache_write_price(self) -> Decimal:
        return self.input_per_million if self.cache_write_per_million is None else self.cache_write_per_million


def validate_thresholds(value: str) -> None:
    try:
        numbers = parse_thresholds(value)
    except ValueError:
        raise ValidationError("Give whole percentages separated by commas, e.g. 50,80,100.") from None
    if any(n <= 0 or n > 1000 for n in numbers):
        raise ValidationError("Each threshold must be between 1 and 1000 percent.")


def parse_thresholds(value: str) -> list[int]:
    return sorted({int(part) for part in value.replace(" ", "").split(",") if part})


class Budget(models.Model):
    """A spending limit on a tenant, or on one of its keys, per calendar period in the tenant's time zone.

    What a period has spent is derived from the ledger plus the reservations still open; a new period
    simply starts empty, so nothing ever needs resetting.
    """

    class Period(models.TextChoices):
        DAY = "day"
        WEEK = "week", "Week (from Monday)"
        MONTH = "month"
        LIFETIME = "lifetime"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="budgets")
    key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets",
                            help_text="Empty: the budget covers every key of the tenant.")
    # Narrower scopes: a budget covers the requests that match every one of these that is set.
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets",
                                help_text="Empty: every project (and keys in none).")
    model = models.CharField(max_length=200, blank=True, default="", db_default="",
                             help_text="A public model name, or a glob such as gpt-4o* or claude-*; empty: every model.")
    tag = models.CharField(max_length=64, blank=True, default="", db_default="",
                           help_text="Only requests carrying this tag (x-tollgate-tags or metadata); empty: any.")
    end_user = models.CharField(max_length=256, blank=True, default="", db_default="",
                                help_text="Only requests whose `user` field is this; empty: any.")
    name = models.CharField(max_length=100, blank=True)
    class SetBy(models.TextChoices):
        OPERATOR = "operator"
        TENANT = "tenant"

    amount = models.DecimalField(max_digits=18, decimal_places=6, help_text="USD per period, to the micro-dollar.")
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    hard = models.BooleanField(default=True, help_text="Deny requests once the amount is reached; otherwise only alert.")
    alert_thresholds = models.CharField(max_length=64, default="50,80,100", validators=[validate_thresholds],
                                        help_text="Percentages of the amount that send an alert email.")
    is_active = models.BooleanField(default=True)
    set_by = models.CharField(max_length=8, choices=SetBy.choices, default=SetBy.OPERATOR,
                              help_text="An operator's budget is read-only to the tenant except its alerts.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["tenant", "key", "period"]

    def __str__(self) -> str:
        return self.name or f"{self.get_period_display()} budget of {self.scope_label}"

    @property
    def scope_label(self) -> str:
        """The scope in words, its narrower parts after the key: "key tg-ab12, model gpt-4o*, tag team:x"."""
        parts = [f"key {self.key.prefix}"] if self.key_id and self.key else []
        if self.project_id and self.project:
            parts.append(f"project {self.project.slug}")
        parts += [f"{what} {value}" for what, value in (("model", self.model), ("tag", self.tag),
                                                         ("user", self.end_user)) if value]
        return ", ".join(parts) or (f"tenant {self.tenant.slug}" if self.tenant_id else "tenant")

    @property
    def amount_micros(self) -> int:
        return to_micros(self.amount)

    def clean(self) -> None:
        if self.key_id and self.tenant_id and self.key.tenant_id != self.tenant_id:
            raise ValidationError({"key": "This key belongs to another tenant."})
        if self.amount is not None and self.amount <= 0:
            raise ValidationError({"amount": "A budget must be more than zero."})
        self.clean_scopes()

    def clean_scopes(self) -> None:
        from . import scopes, tags

        errors: dict[str, str] = {}
        if self.project_id and self.tenant_id and self.project.tenant_id != self.tenant_id:
            errors["project"] = "This project belongs to another tenant."
        elif self.project_id and self.key_id and self.key.project_id != self.project_id:
            errors["project"] = "A key budget's project is the key's own project (or empty)."
        if self.model and scopes.is_glob(self.model):
            try:
                scopes.glob_regex(self.model)
            except scopes.BadGlob as e:
                errors["model"] = str(e)
        elif self.model and (self.model != self.model.strip() or not self.model.isprintable()):
            errors["model"] = "A model name has no surrounding spaces or control characters."
        elif self.model and (route := self.route_named_by()) is not None:
            errors["model"] = (f"'{self.model}' is another name of the model '{route}': name it so (requests are "
                               "counted by the name of the route that served them).")
        if self.tag and not tags.is_tag(self.tag):
            errors["tag"] = ("A tag has up to 64 letters, digits and . _ : = / @ + - characters, starting with a "
                             "letter or digit.")
        if len(self.end_user) > tags.MAX_END_USER_LENGTH:
            errors["end_user"] = f"An end user has up to {tags.MAX_END_USER_LENGTH} characters."
        if (self.tag or self.end_user) and self.period == self.Period.LIFETIME:
            # Pruned ledger days live on in rollups, which keep no tags or users: a lifetime total could not be
            # counted from the ledger again, so these budgets reset by day, week or month.
            errors["period"] = "A tag or end-user budget has a day, week or month period, not lifetime."
        if errors:
            raise ValidationError(errors)

    def route_named_by(self) -> str | None:
        """The route this plain model name is an alias (or prefixed name) of, when it is not a route's own name."""
        from proxy.models import ModelRoute

        routes = ModelRoute.objects.only("name", "aliases", "strip_prefix")
        if routes.filter(name=self.model).exists():
            return None
        return next((route.name for route in routes if self.model in route.public_names()), None)


class BudgetPeriod(models.Model):
    """The running totals of one budget in one period, kept by the database when Redis is not configured."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="+")
    starts_at = models.DateTimeField()
    spent_micros = models.BigIntegerField(default=0, help_text="Whole micro-dollars settled.")
    spent_remainder_picos = models.BigIntegerField(
        default=0, help_text="Pico-dollars settled beyond spent_micros, 0 to 999,999: carried into it at 10**6.")
    reserved_micros = models.BigIntegerField(default=0)

    @property
    def spent_picos(self) -> int:
        return self.spent_micros * PICOS_PER_MICRO + self.spent_remainder_picos

    class Meta:
        constraints = [models.UniqueConstraint(fields=["budget", "starts_at"], name="budget_period_unique")]


class Reservation(models.Model):
    """Money held for a request in flight, kept by the database when Redis is not configured.

    Settling it, or the reaper releasing it once its lease ran out (a crashed process), closes it; the closed row
    stays two days as a marker, so settling again adds nothing and settling a released hold adds only the cost.
    """

    class State(models.TextChoices):
        OPEN = "open"
        SETTLED = "settled"
        RELEASED = "released"

    request_id = models.CharField(max_length=32, unique=True)
    amount_micros = models.BigIntegerField()
    periods = models.JSONField(help_text="The BudgetPeriod ids the amount is held on.")
    expires_at = models.DateTimeField(db_index=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN)
    closed_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        # The reaper looks for open holds whose lease ran out, among many closed markers.
        indexes = [models.Index(fields=["state", "expires_at"], name="reservation_open_expiry")]


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


class BudgetAlert(models.Model):
    """A budget crossed one of its thresholds in one period. The row is the claim: one per threshold and period."""

    class Kind(models.TextChoices):
        THRESHOLD = "threshold"
        REFUSING = "refusing", "Now refusing"

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    kind = models.CharField(max_length=9, choices=Kind.choices, default=Kind.THRESHOLD,
                            help_text="A threshold crossed, or a hard budget's first refusal in the period.")
    threshold = models.PositiveSmallIntegerField(help_text="Percent of the budget.")
    spent_micros = models.BigIntegerField(help_text="Spent when the crossing was seen.")
    limit_micros = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["budget", "period_start", "kind", "threshold"],
                                               name="budget_alert_once_per_threshold_and_period")]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.budget}: {self.threshold}% of the period from {self.period_start:%Y-%m-%d}"
