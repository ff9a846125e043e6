"""Budgets, their running totals and holds where Redis is not configured, and the alerts they send."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from accounts.models import ApiKey, Project, Tenant

from .money import PICOS_PER_MICRO, to_micros


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
        from .. import scopes, tags

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
