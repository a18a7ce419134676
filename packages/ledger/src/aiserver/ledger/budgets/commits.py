"""What recorded events add to budget windows: pure, so that ingest (and a reprice) only have
to write the sums.

An event counts for a budget when it carries every tag of the budget (equal values) and, if the
budget names a model, was reported as that model or priced as it. It adds its exact cost to the
budget's window that holds its `occurred_at` (not the window of the moment it arrived), one to
the window's events, and, when no price could value it, one to the window's unpriced events: an
unpriced event is never counted as $0, and a reprice commits its cost once it is priced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from aiserver.ledger.budgets.periods import Period, window_of


@dataclass(frozen=True, slots=True)
class BudgetScope:
    """What ingest needs of a budget."""

    id: int
    tags: Mapping[str, str]
    model: str | None
    period: Period


@dataclass(frozen=True, slots=True)
class Spend:
    """One recorded event, as a budget sees it."""

    occurred_at: datetime
    tags: Mapping[str, str]
    model: str
    matched_model: str | None
    cost: Decimal | None  # None: unpriced


@dataclass(slots=True)
class WindowSum:
    """What a batch adds to one window of one budget."""

    window_end: datetime | None
    committed: Decimal
    events: int
    unpriced_events: int


def matches(budget: BudgetScope, spend: Spend) -> bool:
    if budget.model is not None and budget.model not in (spend.model, spend.matched_model):
        return False
    tags = spend.tags
    return all(tags.get(key) == value for key, value in budget.tags.items())


def window_sums(
    budgets: Iterable[BudgetScope], time_zone: str, spends: Iterable[Spend]
) -> dict[tuple[int, datetime], WindowSum]:
    """{(budget id, window start): what the spends add to it}."""
    budgets = list(budgets)
    sums: dict[tuple[int, datetime], WindowSum] = {}
    if not budgets:
        return sums
    windows: dict[tuple[Period, datetime], tuple[datetime, datetime | None]] = {}
    for spend in spends:
        for budget in budgets:
            if not matches(budget, spend):
                continue
            span = windows.get((budget.period, spend.occurred_at))
            if span is None:
                span = windows[budget.period, spend.occurred_at] = window_of(
                    budget.period, time_zone, spend.occurred_at
                )
            found = sums.get((budget.id, span[0]))
            if found is None:
                found = sums[budget.id, span[0]] = WindowSum(span[1], Decimal(0), 0, 0)
            found.events += 1
            if spend.cost is None:
                found.unpriced_events += 1
            else:
                found.committed += spend.cost
    return sums
