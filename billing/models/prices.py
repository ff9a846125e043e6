"""What each model costs, per million tokens, from a date on."""

from __future__ import annotations

from datetime import date
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from .money import MICROS, PICOS_PER_MICRO, picos_to_micros_up


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
