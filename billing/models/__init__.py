"""Billing's models and money units, one module per noun; every name is importable from ``billing.models``."""

from __future__ import annotations

from .budgets import Budget, BudgetAlert, BudgetPeriod, Reservation, parse_thresholds, validate_thresholds
from .ledger import UsageRecord, UsageRecordQuerySet, _next_period, _period_start
from .money import MICROS, PICO, PICOS, PICOS_PER_MICRO, micros_to_dollars, picos_to_dollars, picos_to_micros_up, to_micros
from .prices import Price
from .rollups import RollupState, UsageRollup

__all__ = [
    "MICROS", "PICO", "PICOS", "PICOS_PER_MICRO", "Budget", "BudgetAlert", "BudgetPeriod", "Price", "Reservation",
    "RollupState", "UsageRecord", "UsageRecordQuerySet", "UsageRollup", "_next_period", "_period_start",
    "micros_to_dollars", "parse_thresholds", "picos_to_dollars", "picos_to_micros_up", "to_micros", "validate_thresholds",
]
