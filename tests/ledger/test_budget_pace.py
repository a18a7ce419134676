"""A budget window's pace: where its committed spend ends if it goes on as it has since the
window began (committed × the window's length ÷ the time passed, in real time), rounded to the
cent; not before a tenth of the window has passed, never for a total budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from zoneinfo import ZoneInfo

from aiserver.ledger.budgets.periods import window_of
from aiserver.ledger.budgets.service import BudgetView, Pace, _window
from aiserver.ledger.budgets.store import Budget, WindowTotals
from aiserver.ledger.spend.pace import percent, projection

DECEMBER = datetime(2026, 12, 1, tzinfo=UTC)  # a month of 31 days


def view(
    period: str, limit: str, committed: str, as_of: datetime, zone: str = "UTC", **counts: int
) -> BudgetView:
    budget = Budget(
        project_id=1, id=1, name="b", tags={}, model=None, period=period,
        limit_usd=Decimal(limit), thresholds=(), hard=False, webhook_url=None,
        has_webhook_secret=False, created_at=DECEMBER, updated_at=DECEMBER, counts_from=DECEMBER,
    )  # fmt: skip
    start, end = window_of(period, zone, as_of)  # type: ignore[arg-type]
    held = WindowTotals(committed=Decimal(committed), reserved=Decimal("1000"), **counts)
    return BudgetView(budget=budget, window=_window(budget, start, end, held), as_of=as_of)


def test_a_month_projected_from_its_first_ten_days() -> None:
    # 10 of 31 days: 10 USD committed goes on to 31 USD, 124% of a 25 USD limit; the 1,000 USD
    # reserved is not spending and does not count
    pace = view("month", "25", "10", DECEMBER + timedelta(days=10)).pace
    assert pace == Pace(
        passed=Decimal("0.32"),
        projected=Decimal("31.00"),
        of_limit=Decimal(124),
        past_limit=True,
        passes_limit=True,  # 10 of 25 spent: a forecast
    )
    assert pace.share == "124%"
    # 30 of 25 spent: past the limit already, which is no forecast
    over = view("month", "25", "30", DECEMBER + timedelta(days=10)).pace
    assert (over.past_limit, over.passes_limit) == (True, False)


def test_within_the_limit() -> None:
    pace = view("week", "100", "12.5", datetime(2026, 12, 9, 12, tzinfo=UTC)).pace  # a Wednesday
    # 2.5 of 7 days passed (0.357: the share passed is rounded down): 12.5 × 7 ÷ 2.5 = 35
    assert pace == Pace(
        passed=Decimal("0.35"), projected=Decimal("35.00"), of_limit=Decimal(35), past_limit=False
    )


def test_not_projected_before_a_tenth_of_the_window_nor_for_a_total_budget() -> None:
    # a tenth of December's 744 hours is 74.4
    assert view("month", "25", "10", DECEMBER + timedelta(hours=74)).pace is None
    assert view("month", "25", "10", DECEMBER + timedelta(hours=74, minutes=24)).pace is not None
    assert view("total", "25", "10", DECEMBER + timedelta(days=20)).pace is None


def test_a_day_of_a_clock_change_has_its_25_hours() -> None:
    """2026-10-25 in Berlin ends summer time: 25 hours. 5 of them passed is a fifth."""
    as_of = datetime(2026, 10, 24, 22, tzinfo=UTC) + timedelta(hours=5)
    pace = view("day", "10", "1", as_of, zone="Europe/Berlin").pace
    assert pace is not None
    assert (pace.passed, pace.projected, pace.of_limit) == (Decimal("0.20"), 5, 50)


def test_rounded_once_half_up_from_the_exact_amount() -> None:
    half = DECEMBER + timedelta(days=15, hours=12)  # half of December
    assert view("month", "1", "0.5025", half).pace.projected == Decimal("1.01")  # 1.005
    assert view("month", "1", "0.50249995", half).pace.projected == Decimal("1.00")
    # 2 × 5,624,444,446.718963368035385246370204136158: no digit lost before the rounding
    big = view("month", "1000000000000", "5624444446.718963368035385246370204136158", half).pace
    assert big.projected == Decimal("11248888893.44")
    assert big.of_limit == 1  # 1.12%


def test_under_a_dollar_two_significant_digits_where_the_cent_leaves_fewer() -> None:
    """A day budget of 0.003 USD with 0.002 committed at 10:00 UTC: 0.0048 by midnight, which
    the cent would round to 0.00 beside 160% of the limit."""
    pace = view("day", "0.003", "0.002", datetime(2026, 12, 6, 10, tzinfo=UTC)).pace
    assert pace == Pace(
        passed=Decimal("0.41"),
        projected=Decimal("0.0048"),
        of_limit=Decimal(160),
        past_limit=True,
        passes_limit=True,
    )
    half = DECEMBER + timedelta(days=15, hours=12)
    assert view("month", "1", "0.25", half).pace.projected == Decimal("0.50")  # the cent
    assert view("month", "1", "0.0004444", half).pace.projected == Decimal("0.00089")
    assert view("month", "1", "0", half).pace.projected == Decimal("0.00")


def test_a_projection_past_the_window_s_end_is_the_window_as_it_ended() -> None:
    end = DECEMBER + timedelta(days=31)
    assert projection(Decimal("12.5"), DECEMBER, end, end + timedelta(days=3)) == (1, 12.5)
    assert projection(Decimal(1), DECEMBER, DECEMBER, DECEMBER) is None  # no length
    assert percent(Decimal(1), Decimal(3), places=2) == Decimal("33.33")
    assert percent(Decimal(2), Decimal(3)) == 67  # half up: 66.67


def test_past_the_limit_is_decided_on_the_exact_projection() -> None:
    """100.48 of a limit of 100 is past it, though its whole percent reads 100; 0.3% of a limit
    is spending, though it reads 0%; near the window's end the share passed reads 99%."""
    half = DECEMBER + timedelta(days=15, hours=12)
    just_over = view("month", "100", "50.24", half).pace
    assert (just_over.of_limit, just_over.past_limit, just_over.share) == (
        100,
        True,
        "just over 100%",
    )
    just_under = view("month", "100", "49.9", half).pace
    assert (just_under.of_limit, just_under.past_limit, just_under.share) == (100, False, "100%")
    little = view("month", "1000", "1.5", half).pace
    assert (little.of_limit, little.share) == (0, "under 1%")
    late = view("month", "100", "1", DECEMBER + timedelta(days=30, hours=23, minutes=59)).pace
    assert late.passed == Decimal("0.99")


def test_the_command_line_says_the_pace_as_the_pages_do() -> None:
    """`aiserver-ledger budgets show`'s last line: the amount as rounded, the share in words."""
    from aiserver.ledger.cli.budgets import _lines

    tenth_passed = DECEMBER + timedelta(days=10)
    assert _lines(view("month", "25", "10", tenth_passed))[-1] == (
        "  at this pace: ≈ 31.00 USD by the window's end (124% of the limit, projected to pass it)"
    )
    # past its limit already: a fact the lines above say (remaining, % used), not a forecast
    assert _lines(view("month", "25", "30", tenth_passed))[-1] == (
        "  at this pace: ≈ 93.00 USD by the window's end (372% of the limit)"
    )
    half = DECEMBER + timedelta(days=15, hours=12)
    assert _lines(view("month", "1000", "0.0024", half))[-1] == (
        "  at this pace: ≈ 0.0048 USD by the window's end (under 1% of the limit)"
    )
    assert _lines(view("month", "25", "10", DECEMBER + timedelta(days=1)))[-1] == (
        "  at this pace: not projected yet (less than a tenth of the window has passed)"
    )
    assert "at this pace" not in _lines(view("total", "25", "10", half))[-1]


def test_a_projection_counts_a_month_of_a_clock_change_in_real_time() -> None:
    """March in Paris has 30 days and 23 hours. Times of one ZoneInfo subtract as wall-clock
    times (31 days): the projection is worked out in UTC."""
    paris = ZoneInfo("Europe/Paris")
    start, end = datetime(2027, 3, 1, tzinfo=paris), datetime(2027, 4, 1, tzinfo=paris)
    at = datetime(2027, 3, 31, 23, tzinfo=paris)
    found = projection(Decimal(100), start, end, at)
    assert found is not None
    length = (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds()
    assert length == (31 * 24 - 1) * 3600
    passed = (at.astimezone(UTC) - start.astimezone(UTC)).total_seconds()
    assert found.passed == Context(prec=60).divide(Decimal(int(passed)), Decimal(int(length)))
    assert found.passed < Decimal("0.99866")  # by wall clock: 0.998656


def test_an_estimate_never_reads_in_scientific_notation() -> None:
    from aiserver.api.ui.present import SHOW
    from aiserver.ledger.spend.pace import about

    assert SHOW.estimate(about(Decimal("0.00000031"))) == "0.00000031"
    assert SHOW.estimate(about(Decimal("1234567.891"))) == "1,234,567.89"
    # rounded up to a power of ten: two figures, not 0.0100 (a finance review)
    assert SHOW.estimate(about(Decimal("0.0099999"))) == "0.010"
    assert SHOW.estimate(about(Decimal("0.0995"))) == "0.10"
    assert SHOW.estimate(about(Decimal("0.995"))) == "1.00"
    half = DECEMBER + timedelta(days=15, hours=12)
    from aiserver.ledger.cli.budgets import _lines

    assert _lines(view("month", "1", "0.0000000006", half))[-1].startswith(
        "  at this pace: ≈ 0.0000000012 USD"
    )


def test_the_command_s_projection_says_what_it_leaves_out_as_the_page_does() -> None:
    """A finance review: `budgets list` projected "≈ 26.53 USD ... projected to pass it" of a
    window with unpriced events, where the budget page adds that they count 0, "so it may be
    more"; and it wrote the figure without grouping its thousands, as the page does."""
    from aiserver.ledger.cli.budgets import _lines

    half = DECEMBER + timedelta(days=15, hours=12)
    said = _lines(view("month", "5000", "1234.5", half, unpriced_events=2,
                       partially_priced_events=1))[-1]  # fmt: skip
    assert said == (
        "  at this pace: ≈ 2,469.00 USD by the window's end (49% of the limit); 2 unpriced "
        "event(s) count nothing and 1 partially priced event(s) only their priced part, so it "
        "may be more"
    )
    assert _lines(view("month", "5000", "1234.5", half))[-1].endswith("(49% of the limit)")
