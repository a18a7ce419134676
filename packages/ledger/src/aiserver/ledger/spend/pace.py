"""Where a window's spend ends if it goes on as it has since the window began: spent × the
window's length ÷ the time passed, in real time (a day of a clock change has its 23 or 25
hours). A budget's window (`aiserver.ledger.budgets.service.BudgetView.pace`) and the
dashboard's month to date use it.

The product is exact and the quotient is taken to 60 digits; a figure shown from it is rounded
once, half up: an amount by `about` (to the cent, or under a dollar to two significant digits
where the cent would leave fewer: 0.0031, not 0.00), a share to whole percent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Final, NamedTuple

from aiserver.costs.pricing.exact import MULTIPLY

#: A window is projected once this share of it has passed: before, a few calls decide it.
PACE_FROM: Final = Decimal("0.1")
_DIGITS: Final = Context(prec=60)
_CENT: Final = Decimal("0.01")
_MICROSECOND: Final = timedelta(microseconds=1)


class Projection(NamedTuple):
    passed: Decimal  # the share of the window passed, PACE_FROM to 1 (to 60 digits)
    amount: Decimal  # what the window spends by its end at this pace (to 60 digits)


def projection(
    spent: Decimal, start: datetime, end: datetime, as_of: datetime
) -> Projection | None:
    """Where `spent`, the spending of [start, as_of), ends at `end` at the same rate; None
    before PACE_FROM of the window has passed. Past the end, the window as it ended."""
    # in UTC: two times of one ZoneInfo subtract as wall-clock times, which would count a day
    # of a clock change as 24 hours
    start, end, as_of = (t.astimezone(UTC) for t in (start, end, as_of))
    length = (end - start) // _MICROSECOND
    passed = (min(as_of, end) - start) // _MICROSECOND
    if length <= 0 or passed <= 0:
        return None
    share = _DIGITS.divide(Decimal(passed), Decimal(length))
    if share < PACE_FROM:
        return None
    return Projection(share, _DIGITS.divide(MULTIPLY(spent, length), Decimal(passed)))


def about(amount: Decimal) -> Decimal:
    """A projected amount rounded (half up) to the cent, or under a dollar to two significant
    digits where the cent would leave fewer."""
    unit = _CENT
    if amount > 0:
        unit = min(_CENT, Decimal(1).scaleb(amount.adjusted() - 1))
    near = amount.quantize(unit, rounding=ROUND_HALF_UP, context=_DIGITS)
    if amount > 0 and near.adjusted() > amount.adjusted():  # up to a power of ten: 0.0100
        near = near.quantize(min(_CENT, unit.scaleb(1)), context=_DIGITS)  # is 0.010
    return near


def percent(part: Decimal, whole: Decimal, places: int = 0) -> Decimal:
    """`part` in percent of `whole` (not 0), rounded half up to `places`."""
    share = _DIGITS.divide(MULTIPLY(part, 100), whole)
    return share.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP, context=_DIGITS)
