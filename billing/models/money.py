"""Money units: budgets and holds count integer micro-dollars, the ledger integer pico-dollars."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

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
