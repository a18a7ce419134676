"""Exact money: what a usable price is, and the arithmetic context every cost is computed in.

Prices are ``Decimal`` (or ``int``), never ``float``; every cost is ``quantity * unit_price``
with no rounding, and a total is the exact sum of its costs. The context lives here, apart from
the pricers, so that the caller's decimal context never decides a digit.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Final

# With this precision no product or sum of our bounded quantities and any sane price is ever
# rounded, and if one ever were, Inexact raises instead of losing a cent.
EXACT: Final = decimal.Context(
    prec=1000,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow],
)
ZERO: Final = Decimal(0)
MULTIPLY: Final = EXACT.multiply
ADD: Final = EXACT.add
#: Sums and differences of money anywhere (spend, budgets, reprices) go through these, never
#: through `+` and `-`: those round to the caller's context (28 digits by default), and a cost
#: of a large quantity at a price with many decimals has more.
SUBTRACT: Final = EXACT.subtract
DIVIDE: Final = EXACT.divide


def price_of(value: object) -> Decimal | None:
    """A usable price, or None. A float is a programming error: money is never a float."""
    if isinstance(value, float):
        raise TypeError("prices must be Decimal or int; decode with float_hook=decimal.Decimal")
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        return None
    price = Decimal(value)
    if not price.is_finite() or price < 0:
        return None
    return price


def exponent(number: Decimal) -> int:
    """The exponent of a finite decimal."""
    value = number.as_tuple().exponent
    if not isinstance(value, int):
        raise ValueError(f"not a finite price: {number}")
    return value


def plain(number: Decimal) -> str:
    """A decimal for a note: ``128000``, ``0.5``, never ``1.28E+5``."""
    return str(int(number)) if number == number.to_integral_value() else str(number)
