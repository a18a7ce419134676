"""Amounts on the dashboard's pages are grouped by thousands, as counts are, and stay exact; the
chart's data and the CSV keep the API's strings, which a script and a spreadsheet read."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest

from aiserver.api.ui.present import (
    Pivot,
    Show,
    about,
    grouped,
    per_million,
    places,
    rounded,
    rounding,
    shown_amount,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.00002406", "0.00002406"),
        ("999.5", "999.5"),
        ("1000", "1,000"),
        ("12345.678901", "12,345.678901"),
        ("-1234567.50", "-1,234,567.50"),
        ("unpriced", "unpriced"),
        ("", ""),
    ],
)
def test_an_amounts_whole_part_is_grouped_and_its_decimals_kept(text: str, expected: str) -> None:
    assert grouped(text) == expected


def test_a_page_shows_an_amount_at_its_columns_scale_grouped_by_thousands() -> None:
    assert shown_amount(Decimal("25000.5"), 2) == "25,000.50"
    assert shown_amount("1234.5", 4) == "1,234.5000"
    assert shown_amount(None, 2) == ""
    assert Show.amount("1234567", 0) == "1,234,567"  # what the templates call


def test_the_chart_reads_the_tables_values_without_the_grouping() -> None:
    pivot = Pivot(
        columns=["gpt-4o", "claude"],
        rows=[("Dec 1", ["1234.5", "0.25"], "1234.75"), ("Dec 2", ["0", "12000"], "12000")],
        currency="USD",
    )
    shown = pivot.shown()
    assert shown == [
        ("Dec 1", ["1,234.5", "0.25"], "1,234.75"),
        ("Dec 2", ["0.0", "12,000.00"], "12,000.00"),
    ]
    chart = pivot.chart()
    assert chart["series"] == [
        {"label": "gpt-4o", "values": ["1234.5", "0.0"]},
        {"label": "claude", "values": ["0.25", "12000.00"]},
    ]
    # the same values as the table shows, each a number the script can read
    for i, series in enumerate(chart["series"]):
        assert [Decimal(v) for v in series["values"]] == [
            Decimal(cells[i].replace(",", "")) for _, cells, _ in shown
        ]


@pytest.mark.parametrize(
    ("per_token", "expected"),
    [
        ("0.0000025", "2.5"),
        ("0.000002", "2"),
        ("0.00006", "60"),
        ("0", "0"),
        ("15", "15000000"),
        # more digits than a Decimal context's default 28: none is lost
        ("0.0000001234567890123456789012345678901", "0.1234567890123456789012345678901"),
        (Decimal("1E-7"), "0.1"),
        (None, None),
        ("none", None),
    ],
)
def test_a_price_per_token_is_shown_per_million_tokens_exactly(
    per_token: object, expected: str | None
) -> None:
    assert per_million(per_token) == expected
    if expected is not None:
        with localcontext(prec=60):
            assert Decimal(expected) == Decimal(per_token) * 1_000_000  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exact", "shown", "how"),
    [
        ("1234.5678", "1,234.57", "rounded to the cent"),
        ("0.00245", "0.0025", "rounded to two significant figures"),  # was "0.00"
        ("0.0025", "0.0025", None),  # exact: no "≈"
        ("0.000000031", "0.000000031", None),
        # one significant figure: as it is, not 0.00000060 beside "Exactly 0.0000006"
        ("0.0000006", "0.0000006", None),
        ("0.00000060", "0.0000006", None),
        ("0.005", "0.005", None),
        ("0.0000000314", "0.000000031", "rounded to two significant figures"),
        ("-0.004994", "-0.0050", "rounded to two significant figures"),
        ("0", "0.00", None),
        ("0.01", "0.01", None),
        # rounded up to a power of ten: two figures, not 0.0100 (a finance review)
        ("0.0099999", "0.010", "rounded to two significant figures"),
        ("0.00995", "0.010", "rounded to two significant figures"),
        ("-0.000099999", "-0.00010", "rounded to two significant figures"),
    ],
)
def test_a_headline_amount_below_a_cent_keeps_two_figures_not_zero(
    exact: str, shown: str, how: str | None
) -> None:
    assert about(exact) == shown
    assert rounded(exact) == (how is not None)
    if how is not None:
        assert rounding(exact) == how


def test_a_column_lines_up_to_at_most_the_given_decimals_and_shows_a_longer_amount_whole() -> None:
    """The catalog's prices per million tokens: a source's binary float digits (0.30001999999999996)
    would give every price of the column 17 decimals; they are shown whole, past the points of
    the others, which keep the scale of their own most decimals."""
    column = ["0.5", "2.499999", "0.30001999999999996", None, "12"]
    assert places(column) == 17
    assert places(column, at_most=6) == 6
    assert [shown_amount(v, places(column, at_most=6)) for v in column] == [
        "0.500000", "2.499999", "0.30001999999999996", "", "12.000000",
    ]  # fmt: skip
    assert places(["0.5", "0.30001999999999996"], at_most=6) == 1
    assert places(["0.30001999999999996"], at_most=6) == 0
