"""The pages read as a finance person reads figures, in a real browser, still exactly: every
amount of a column with the same number of decimals (trailing zeros added: the same value) in
figures of one width, right-aligned, and text left-aligned; times and model names on one line,
a wide table scrolling in its own box rather than the page; counts grouped by thousands; and a
headline figure rounded to the cent only where the page says so, with the exact amount beside
it. The CSV keeps every value exactly as the API writes it."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .conftest import Site, header, sign_in, spend, table
from .test_pages import download

pytestmark = pytest.mark.slow

BERLIN: Final = ZoneInfo("Europe/Berlin")  # ui-a's time zone
COUNTS: Final = ("events", "unpriced_events", "partially_priced_events", "input_tokens",
                 "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 "reasoning_tokens")  # fmt: skip


def decimals(amount: str) -> int:
    return len(amount.partition(".")[2])


def same_column(shown: list[str], exact: list[str]) -> None:
    """`shown` is the column `exact` (the API's strings) at one scale: the same values, each with
    as many decimals as the longest of them."""
    assert [Decimal(s) for s in shown] == [Decimal(e) for e in exact]
    assert {decimals(s) for s in shown} == {max(decimals(e) for e in exact)}, shown


def month(day: date, back: int) -> date:
    index = day.year * 12 + day.month - 1 - back
    return date(index // 12, index % 12 + 1, 1)


def cents(exact: str) -> str:
    """The headline as the page must write it: rounded to the cent, and said to be rounded."""
    value = Decimal(exact)
    rounded = value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return ("≈ " if rounded != value else "") + f"{rounded:,.2f} USD"


def last_30_days() -> dict[str, str]:
    today = datetime.now(BERLIN).date()
    return {"from": (today - timedelta(days=29)).isoformat(),
            "to": (today + timedelta(days=1)).isoformat()}  # fmt: skip


async def test_every_amount_of_a_column_has_the_decimals_of_its_longest_and_the_csv_is_exact(
    browser: WebDriver, site: Site, downloads: Path
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    # the overview's top models: their costs have different scales in the API's answer
    daily = await spend(site, **last_30_days(), bucket="day", group_by="model", top="8")
    costs = [g["cost"] for g in daily["groups"]] + [daily["total"]["cost"]]
    assert len({decimals(c) for c in costs}) > 1, costs  # else there is nothing to line up
    top = table(browser, "top-models")
    footer = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#top-models tfoot td")]
    same_column([row[1] for row in top] + [footer[0]], costs)
    # the chart's table: each model's column, and the totals, at one scale each
    columns = header(browser, "daily-table")[1:]
    pivot = table(browser, "daily-table")
    for i in range(len(columns)):
        column = [row[1 + i] for row in pivot]
        assert [Decimal(c) for c in column]
        assert len({decimals(c) for c in column}) == 1, (columns[i], column)

    # the events' costs
    browser.get(f"{site.url}/ui/p/ui-a/events/")
    listed = [row[5].removesuffix(" USD") for row in table(browser, "events")]
    priced = [c for c in listed if c != "unpriced"]
    assert len(priced) > 1
    assert len({decimals(c) for c in priced}) == 1, priced

    # Explore's table of every bucket and group, and its CSV: the API's strings as they are
    today = datetime.now(BERLIN).date()
    since, until = (today - timedelta(days=13)).isoformat(), (today + timedelta(days=1)).isoformat()
    browser.get(f"{site.url}/ui/p/ui-a/explore?from={since}&to={until}&tz=Europe%2FBerlin"
                "&bucket=day&group_by=model")  # fmt: skip
    answer = await spend(site, **{"from": since, "to": until, "tz": "Europe/Berlin",
                                  "bucket": "day", "group_by": "model"})  # fmt: skip
    groups = [g for b in answer["buckets"] for g in b["groups"]]
    # a group of unpriced events only reads "unpriced" (its CSV cost: none), not 0
    unknown = [bool(g["events"]) and g["unpriced_events"] == g["events"] for g in groups]
    assert any(unknown), groups  # ui-a's mystery model
    exact = [g["cost"] for g, u in zip(groups, unknown, strict=True) if not u]
    assert len({decimals(c) for c in exact}) > 1, exact
    cost = header(browser, "rows").index("cost")
    shown = [row[cost] for row in table(browser, "rows")]
    assert [s for s, u in zip(shown, unknown, strict=True) if u] == ["unpriced"] * sum(unknown)
    same_column([s for s, u in zip(shown, unknown, strict=True) if not u], exact)
    _, rows = download(browser, downloads, "csv")
    # no zeros added to the CSV
    assert [row[cost] for row in rows[1:]] == [
        "" if u else g["cost"] for g, u in zip(groups, unknown, strict=True)
    ]
    assert [row[cost + 2] for row in rows[1:]] == [
        str(g["events"]) for b in answer["buckets"] for g in b["groups"]
    ]


#: Each cell of a table row's computed alignment, font figures and wrapping.
STYLES = """
return Array.from(document.querySelectorAll(arguments[0])).map(c => {
  const s = getComputedStyle(c);
  return [c.textContent.trim(), s.textAlign, s.fontVariantNumeric, s.whiteSpace];
});
"""


def styles(browser: WebDriver, selector: str) -> list[list[str]]:
    found: list[list[str]] = browser.execute_script(STYLES, selector)
    assert found, selector
    return found


def left(align: str) -> bool:
    return align in ("left", "start")


async def test_text_reads_from_the_left_and_figures_from_the_right_in_figures_of_one_width(
    browser: WebDriver, site: Site
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    browser.get(f"{site.url}/ui/p/ui-a/events/")
    cells = styles(browser, "#events tbody tr:first-child td")
    (_, when), (_, model), (_, provider), (_, status), (_, cost), (_, tags) = (
        (c[0], c[1]) for c in cells
    )
    assert all(left(a) for a in (when, model, provider, status, tags)), cells
    assert cost == "right", cells
    assert "tabular-nums" in cells[4][2]
    # the headings over them follow their column
    headings = styles(browser, "#events thead th")
    assert left(headings[2][1]), headings  # model
    assert headings[5][1] == "right", headings  # cost

    browser.get(f"{site.url}/ui/p/ui-a/explore")
    names = header(browser, "rows")
    cells = styles(browser, "#rows tbody tr:first-child td")
    by_name = dict(zip(names, cells, strict=True))
    for text_column in ("from", "to (not included)", "ended", "model", "currency"):
        assert left(by_name[text_column][1]), (text_column, by_name[text_column])
    for number_column in ("cost", *(c.replace("_", " ") for c in COUNTS)):
        assert by_name[number_column][1] == "right", (number_column, by_name[number_column])
        assert "tabular-nums" in by_name[number_column][2]

    browser.get(f"{site.url}/ui/p/ui-a/")
    assert all(left(c[1]) for c in styles(browser, "#top-models tbody th"))
    assert all(c[1] == "right" for c in styles(browser, "#top-models tbody td"))


async def test_times_and_model_names_stay_on_one_line_and_wide_tables_scroll_in_their_box(
    browser: WebDriver, site: Site
) -> None:
    sign_in(browser, site, site.keys["a"])  # admin: the keys page too
    wide = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];"
    browser.get(f"{site.url}/ui/p/ui-a/events/")
    for cell in styles(browser, "#events tbody td:nth-child(2), #events tbody td:nth-child(3)"):
        assert cell[3] == "nowrap", cell
    scrolled, width = browser.execute_script(wide)
    assert scrolled <= width  # the page does not scroll sideways: a table's box does

    browser.get(f"{site.url}/ui/p/ui-a/explore")
    # from, to and model (after ended)
    for cell in styles(browser, "#rows tbody td:is(:nth-child(-n+2), :nth-child(4))"):
        assert cell[3] == "nowrap", cell
    scrolled, width = browser.execute_script(wide)
    assert scrolled <= width

    browser.get(f"{site.url}/ui/p/ui-a/budgets")
    (window,) = styles(browser, "#budget-list tbody td.window")
    times = styles(browser, "#budget-list tbody td.window .when")
    assert [t[0] for t in times] == window[0].split(" to "), (times, window)
    assert {t[3] for t in times} == {"nowrap"}  # each time on one line, the cell broken between
    # the whole table fits a window of 1280 pixels: its last column did not
    table_width = "const t = document.getElementById(arguments[0]);"
    table_width += " return [t.scrollWidth, t.parentElement.clientWidth];"
    needed, box = browser.execute_script(table_width, "budget-list")
    assert needed <= box, (needed, box)
    browser.get(f"{site.url}/ui/p/ui-a/keys")
    for cell in styles(browser, "#key-list tbody td:nth-child(5)"):  # created
        assert cell[3] == "nowrap", cell


async def test_counts_are_grouped_by_thousands_on_the_page_not_in_the_csv(
    browser: WebDriver, site: Site
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    daily = await spend(site, **last_30_days(), bucket="day", group_by="model", top="8")
    tokens = [g["input_tokens"] for g in daily["groups"]]
    assert any(t >= 1000 for t in tokens)
    shown = table(browser, "top-models")
    # model, cost, events, unpriced, partially priced, input, output
    assert [row[5] for row in shown] == [f"{t:,}" for t in tokens]
    assert [row[6] for row in shown] == [f"{g['output_tokens']:,}" for g in daily["groups"]]
    footer = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#top-models tfoot td")]
    assert footer[4] == f"{daily['total']['input_tokens']:,}"


async def test_a_headline_rounded_to_the_cent_says_so_beside_the_exact_amount(
    browser: WebDriver, site: Site
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    today = datetime.now(BERLIN).date()
    said = []
    for index, back in ((1, 0), (2, 1)):
        answer = await spend(site, **{"from": month(today, back).isoformat(),
                                      "to": month(today, back - 1).isoformat()})  # fmt: skip
        exact = answer["total"]["cost"]
        card = browser.find_element(By.ID, f"period-{index}")
        headline = card.find_element(By.CSS_SELECTOR, ".amount").text
        assert headline == cents(exact)
        said.append(headline)
        # the exact amount, visible in the same card
        shown = card.find_element(By.CSS_SELECTOR, ".exact")
        assert shown.is_displayed()
        assert shown.find_element(By.CSS_SELECTOR, ".cost").text == exact
        if headline.startswith("≈"):
            assert "rounded to the cent" in shown.text

    since = (today - timedelta(days=13)).isoformat()
    until = (today + timedelta(days=1)).isoformat()
    browser.get(f"{site.url}/ui/p/ui-a/explore?from={since}&to={until}&bucket=day"
                "&group_by=model")  # fmt: skip
    answer = await spend(site, **{"from": since, "to": until, "bucket": "day",
                                  "group_by": "model", "tz": "Europe/Berlin"})  # fmt: skip
    exact = answer["total"]["cost"]
    assert browser.find_element(By.ID, "answer-about").text == cents(exact)
    said.append(cents(exact))
    total = browser.find_element(By.ID, "answer-total")
    assert total.is_displayed()
    assert total.text == exact
    assert "ounded to the cent; exactly" in total.find_element(By.XPATH, "..").text
    assert any(s.startswith("≈ ") for s in said)  # a rounded figure was checked
