"""The pure arithmetic of budgets: which events a budget counts, what they add to its windows,
and what a reprice changes there."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from aiserver.ledger.budgets.commits import (
    BudgetScope,
    Spend,
    crossings,
    window_deltas,
    window_sums,
)
from aiserver.ledger.budgets.service import BudgetView, _window
from aiserver.ledger.budgets.store import Budget, WindowTotals

AT = datetime(2026, 12, 3, 10, tzinfo=UTC)
TEAM = BudgetScope(1, {"team": "search"}, None, "day", Decimal(10), (Decimal(50), Decimal(100)))
MODEL = BudgetScope(2, {}, "gpt-x", "month", Decimal(1), (Decimal(100),))


def spend(cost: str | None, *, model: str = "mystery", matched: str | None = None,
          **tags: str) -> Spend:  # fmt: skip
    return Spend(AT, tags, model, matched, None if cost is None else Decimal(cost))


def test_an_unpriced_event_counts_apart_and_a_reprice_moves_it_into_the_cost() -> None:
    before = spend(None, team="search")
    after = spend("0.75", matched="gpt-x", team="search")
    deltas = window_deltas([TEAM, MODEL], "UTC", [(before, after)])
    day, month = datetime(2026, 12, 3, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    assert {k: (v.committed, v.events, v.unpriced_events) for k, v in deltas.items()} == {
        (1, day): (Decimal("0.75"), 0, -1),  # the same event, now priced
        (2, month): (Decimal("0.75"), 1, 0),  # priced as gpt-x: the model budget counts it now
    }


def test_a_price_that_did_not_change_changes_no_window() -> None:
    same = spend("0.5", team="search")
    assert window_deltas([TEAM], "UTC", [(same, same)]) == {}


def test_a_threshold_is_crossed_by_the_addition_that_reaches_it_not_by_later_ones() -> None:
    sums = window_sums([TEAM], "UTC", [spend("5", team="search")])
    key = (1, datetime(2026, 12, 3, tzinfo=UTC))
    # 5 added: from 0 to 5 reaches 50% of 10; from 7 to 12, 100%; from 10 to 15, nothing new
    assert [c.threshold for c in crossings([TEAM], sums, {key: Decimal(5)})] == [Decimal(50)]
    assert [c.threshold for c in crossings([TEAM], sums, {key: Decimal(12)})] == [Decimal(100)]
    assert crossings([TEAM], sums, {key: Decimal(15)}) == []


def view(limit: str, committed: str, reserved: str = "0", **counts: int) -> BudgetView:
    budget = Budget(
        project_id=1, id=1, name="b", tags={}, model=None, period="total",
        limit_usd=Decimal(limit), thresholds=(), hard=False, webhook_url=None,
        has_webhook_secret=False, created_at=AT, updated_at=AT, counts_from=AT,
    )  # fmt: skip
    held = WindowTotals(committed=Decimal(committed), reserved=Decimal(reserved), **counts)
    return BudgetView(budget=budget, window=_window(budget, AT, None, held), as_of=AT)


def test_how_far_over_a_window_is_exact_past_28_digits() -> None:
    """The dashboard's "over budget by" was `committed - limit` in a template: rounded to the
    default context's 28 digits (5,624,444,396.718963368035385246 for the value below)."""
    over = view("50", "5624444446.718963368035385246370204136158")
    assert over.over_by == Decimal("5624444396.718963368035385246370204136158")
    assert over.full


def test_a_window_is_full_by_its_exact_room_not_by_its_rounded_share() -> None:
    nearly = view("1.00004", "1")
    # rounded down: 100 would read as full
    assert (nearly.window.used_percent, nearly.window.remaining) == (
        Decimal("99.99"),
        Decimal("0.00004"),
    )
    assert view("1", "1.000049").window.used_percent == Decimal("100")  # 100.0049: past it
    assert not nearly.full
    assert view("1.00004", "1", reserved="0.00004").full  # held: no room, nothing overspent
    assert view("1.00004", "1.00004").full


def test_the_command_line_names_a_window_s_unpriced_and_partially_priced_events() -> None:
    """`aiserver-ledger budgets` says both counts that make `committed` a lower bound (it said
    the unpriced ones only), and neither where there are none."""
    from aiserver.ledger.cli.budgets import _lines

    def committed(v: BudgetView) -> str:
        return next(line for line in _lines(v) if line.startswith("  committed:"))

    counted = view("10", "0.5", events=5, unpriced_events=2, partially_priced_events=1)
    assert counted.window.lower_bound
    assert committed(counted) == (
        "  committed:   0.5 USD in 5 events, 2 unpriced, 1 partially priced"
    )
    whole = view("10", "0.5", events=5)
    assert (committed(whole), whole.window.lower_bound) == (
        "  committed:   0.5 USD in 5 events",
        False,
    )
