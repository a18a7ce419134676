"""What recorded events add to budget windows, and the alerts they raise: pure, so that ingest
(and a reprice) only have to write the sums.

An event counts for a budget when it carries every tag of the budget (equal values), if the
budget names a model, was reported as that model or priced as it, and its window is not older
than the one the budget was made in (`counts_from`). It adds its exact cost to the
budget's window that holds its `occurred_at` (not the window of the moment it arrived), one to
the window's events, and, when no price could value it, one to the window's unpriced events: an
unpriced event is never counted as $0, and a reprice commits its cost once it is priced. A
partially priced event (a usage dimension without a price) adds the cost of its priced part and
one to the window's partially priced events: with any, the committed cost is a lower bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final

from aiserver.costs.pricing.exact import ADD, DIVIDE, MULTIPLY, SUBTRACT
from aiserver.ledger.budgets.periods import FOREVER, Period, window_of


@dataclass(frozen=True, slots=True)
class BudgetScope:
    """What ingest needs of a budget."""

    id: int
    tags: Mapping[str, str]
    model: str | None
    period: Period
    limit_usd: Decimal = Decimal(0)
    thresholds: tuple[Decimal, ...] = ()
    has_webhook: bool = False
    #: The start of the first window the budget counts (the one it was made in): an event of an
    #: earlier window counts for none of its windows.
    counts_from: datetime = FOREVER


@dataclass(frozen=True, slots=True)
class Spend:
    """One recorded event, as a budget sees it."""

    occurred_at: datetime
    tags: Mapping[str, str]
    model: str
    matched_model: str | None
    cost: Decimal | None  # None: unpriced
    partial: bool = False  # partially priced: `cost` is its priced part's


@dataclass(slots=True)
class WindowSum:
    """What a batch adds to one window of one budget."""

    window_end: datetime | None
    committed: Decimal
    events: int
    unpriced_events: int
    partially_priced_events: int = 0


def matches(budget: BudgetScope, spend: Spend) -> bool:
    if budget.model is not None and budget.model not in (spend.model, spend.matched_model):
        return False
    tags = spend.tags
    return all(tags.get(key) == value for key, value in budget.tags.items())


#: The windows found are remembered by the quarter of an hour (UTC) of the times they were
#: found for: windows start at a local midnight, and every offset a zone has used since 1972
#: is a whole number of quarters, so a quarter lies in one window. Each is checked to hold the
#: time all the same (a quarter across two windows is found again). Before, a window was
#: remembered by the exact time: found again for nearly every event (12.7 us of 13.8 per event,
#: 100,000 events over three days under one budget).
_QUARTER_S: Final = 900


def window_sums(
    budgets: Iterable[BudgetScope],
    time_zone: str,
    spends: Iterable[Spend],
    into: dict[tuple[int, datetime], WindowSum] | None = None,
) -> dict[tuple[int, datetime], WindowSum]:
    """{(budget id, window start): what the spends add to it}; added to `into` when given (a
    caller that sums a large request a slice at a time)."""
    budgets = list(budgets)
    sums: dict[tuple[int, datetime], WindowSum] = {} if into is None else into
    if not budgets:
        return sums
    windows: dict[tuple[Period, int], tuple[datetime, datetime | None]] = {}
    for spend in spends:
        at = spend.occurred_at
        quarter = int(at.timestamp()) // _QUARTER_S
        for budget in budgets:
            if not matches(budget, spend):
                continue
            span = windows.get((budget.period, quarter))
            if span is None or at < span[0] or (span[1] is not None and at >= span[1]):
                span = windows[budget.period, quarter] = window_of(budget.period, time_zone, at)
            if span[0] < budget.counts_from:
                continue  # a window from before the budget: it counts none of its events
            found = sums.get((budget.id, span[0]))
            if found is None:
                found = sums[budget.id, span[0]] = WindowSum(span[1], Decimal(0), 0, 0)
            found.events += 1
            if spend.cost is None:
                found.unpriced_events += 1
            else:
                found.committed = ADD(found.committed, spend.cost)
                found.partially_priced_events += spend.partial
    return sums


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold that a transaction's additions carried a window's committed cost past."""

    budget_id: int
    window_start: datetime
    window_end: datetime | None
    threshold: Decimal
    limit_usd: Decimal
    committed: Decimal
    has_webhook: bool


def threshold_level(limit_usd: Decimal, threshold: Decimal) -> Decimal:
    """The committed cost at which `threshold` (a percentage) of `limit_usd` is reached."""
    return DIVIDE(MULTIPLY(limit_usd, threshold), 100)  # exact: a shift


def crossings(
    budgets: Iterable[BudgetScope],
    sums: Mapping[tuple[int, datetime], WindowSum],
    committed: Mapping[tuple[int, datetime], Decimal],
) -> list[Crossing]:
    """The thresholds crossed: those at or below a window's committed cost after the additions
    (`committed`, as the database returned it) and above it before. Each window row is locked
    by the transaction that adds to it, so of two transactions racing past a threshold the
    second one finds it passed already: one crossing, one alert."""
    by_id = {b.id: b for b in budgets}
    found = []
    for key, after in committed.items():
        budget = by_id[key[0]]
        before = SUBTRACT(after, sums[key].committed)
        for threshold in budget.thresholds:
            level = threshold_level(budget.limit_usd, threshold)
            if before < level <= after:
                found.append(
                    Crossing(key[0], key[1], sums[key].window_end, threshold, budget.limit_usd,
                             after, budget.has_webhook)
                )  # fmt: skip
    return found


def window_deltas(
    budgets: Iterable[BudgetScope], time_zone: str, changes: Iterable[tuple[Spend, Spend]]
) -> dict[tuple[int, datetime], WindowSum]:
    """What repricing events changes in budget windows: each event's old contribution out and
    its new one in ((before, after) pairs of the same event, so of the same window). Windows
    that do not change are left out."""
    budgets, changes = list(budgets), list(changes)
    before = window_sums(budgets, time_zone, (old for old, _ in changes))
    after = window_sums(budgets, time_zone, (new for _, new in changes))
    deltas = {}
    for key in before.keys() | after.keys():
        old = before.get(key) or WindowSum(None, Decimal(0), 0, 0)
        new = after.get(key) or WindowSum(None, Decimal(0), 0, 0)
        delta = WindowSum(
            new.window_end or old.window_end,
            SUBTRACT(new.committed, old.committed),
            new.events - old.events,
            new.unpriced_events - old.unpriced_events,
            new.partially_priced_events - old.partially_priced_events,
        )
        if (
            delta.committed
            or delta.events
            or delta.unpriced_events
            or delta.partially_priced_events
        ):
            deltas[key] = delta
    return deltas
