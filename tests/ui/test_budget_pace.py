"""A budget's pace on the dashboard: where its window's committed spend ends if it goes on as it
has since the window began (committed × the window's length ÷ the time passed), from a tenth of
the window on; on the budget's page in words, in the budgets tables as a share of the limit under
the used share. Checked against the API's window, at the instants before and after the pages
were read (the pace moves with the clock)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .conftest import Site, admin, as_said, bearer, half_up, sign_in, table, text

pytestmark = pytest.mark.slow

DIGITS = Context(prec=60)
MICROSECOND = timedelta(microseconds=1)
SAID = re.compile(
    r"≈ (?P<amount>[0-9,.]+) USD by the window's end, ≈ (?P<share>[0-9]+)% of the limit"
    r"(?P<past>: projected to pass it)?\. "
    r"The committed spend of the (?P<passed>[0-9]+)% of the window passed, "
    r"carried on at the same rate(?P<unpriced>; its [0-9,]+ unpriced events count 0, so it may "
    r"be more)?\."
)
LISTED = re.compile(
    r".*% committed on pace for ≈ (?P<share>[0-9]+)% by the window's end"
    r"(?P<past>: projected to pass the limit)?"
)


def pace_at(window: dict[str, Any], limit: Decimal, at: datetime) -> tuple[Decimal, ...]:
    """(share of the window passed, projected amount, in percent of the limit) at `at`."""
    start, end = (datetime.fromisoformat(window[k]) for k in ("start", "end"))
    length, passed = (end - start) // MICROSECOND, (at - start) // MICROSECOND
    projected = DIGITS.divide(Decimal(window["committed"]) * length, Decimal(passed))
    return (Decimal(passed) / Decimal(length), projected,
            DIGITS.divide(projected * 100, limit))  # fmt: skip


async def test_a_budget_s_pace_is_where_its_window_ends_at_the_rate_so_far(
    browser: WebDriver, site: Site
) -> None:
    sign_in(browser, site, site.keys["a"])
    before = datetime.now(UTC)
    browser.get(f"{site.url}/ui/p/ui-a/budgets/{site.budget_id}")
    said = text(browser.find_element(By.ID, "budget-pace"))
    listed = {}
    for page, table_id in (("budgets", "budget-list"), ("", "budgets")):  # and the overview
        browser.get(f"{site.url}/ui/p/ui-a/{page}")
        (row,) = table(browser, table_id)
        listed[table_id] = row[8] if table_id == "budget-list" else row[-1]
    after = datetime.now(UTC)
    async with site.client() as client:
        response = await client.get(f"/v1/budgets/{site.budget_id}", headers=bearer(site.keys["a"]))
    assert response.status_code == 200, response.text
    budget = response.json()
    window, limit = budget["window"], Decimal(budget["limit_usd"])
    assert budget["period"] == "month"
    assert Decimal(window["committed"]) > 0

    early, late = pace_at(window, limit, before), pace_at(window, limit, after)
    if late[0] < Decimal("0.1") or (early[0] < Decimal("0.1") and "not projected" in said):
        # the first tenth of the month (the 1st to the 4th): too early to project
        assert said == "not projected yet: less than a tenth of the window has passed."
        assert all("on pace" not in cell for cell in listed.values()), listed
        return
    found = SAID.fullmatch(said)
    assert found, said
    # the later the instant, the more of the window has passed, and the lower the projection
    amount = Decimal(found["amount"].replace(",", ""))
    assert as_said(late[1]) <= amount <= as_said(early[1]), (said, early, late)
    share = Decimal(found["share"])
    assert half_up(late[2], "1") <= share <= half_up(early[2], "1"), (said, early, late)
    over = Decimal(window["committed"]) > limit  # a fact the page says, not a forecast
    assert bool(found["past"]) == (late[1] > limit and not over), (said, late)
    passed = int(found["passed"])
    assert int(early[0] * 100) <= passed <= int(late[0] * 100)  # rounded down
    assert bool(found["unpriced"]) == (window["unpriced_events"] > 0)
    for table_id, cell in listed.items():
        shown = LISTED.fullmatch(cell)
        assert shown, (table_id, cell)
        listed_share = Decimal(shown["share"])
        assert half_up(late[2], "1") <= listed_share <= half_up(early[2], "1"), (table_id, cell)
        assert bool(shown["past"]) == (late[1] > limit and not over), (cell, late)


async def test_a_total_budget_has_no_pace(browser: WebDriver, site: Site) -> None:
    """A total budget's window has no end: nothing to project to."""
    async with site.client() as client:
        response = await client.post(
            "/v1/budgets",
            json={"name": "Pace total", "limit_usd": "1000", "period": "total"},
            headers=bearer(site.keys["c"]),
        )
    assert response.status_code == 201, response.text
    sign_in(browser, site, site.keys["c"])
    browser.get(f"{site.url}/ui/p/ui-c/budgets/{response.json()['id']}")
    assert browser.find_elements(By.ID, "budget-facts")
    assert browser.find_elements(By.ID, "budget-pace") == []
    browser.get(f"{site.url}/ui/p/ui-c/budgets")
    rows = {row[0]: row for row in table(browser, "budget-list")}
    assert "on pace" not in rows["Pace total"][8]


#: The colour of a projection past the limit (`--warn`) and of an overrun (`--bad`).
WARN = "rgb(122, 65, 0)"
BAD = "rgb(164, 14, 38)"


def _zone_at_three_pm(now: datetime) -> str:
    """A fixed-offset zone whose clock reads 15:xx at `now`: a day's window is then between 62%
    and 67% passed, whatever the hour of the run."""
    offset = (15 - now.hour + 12) % 24 - 12  # hours east of UTC, -12 to 11
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"  # Etc/GMT-5 is UTC+5


async def test_a_projection_past_the_limit_reads_as_a_forecast_not_an_overrun(
    browser: WebDriver, site: Site
) -> None:
    """A budget 90% used two thirds into its day is on pace for about 140%: before, the pages
    said "past the limit" in the bold red of a budget that is over it."""
    now = datetime.now(UTC)
    zone = _zone_at_three_pm(now)
    assert now.astimezone(ZoneInfo(zone)).hour == 15
    async with site.client() as client:
        made = await client.post(
            "/v1/projects", json={"slug": "ui-pace", "name": "Pace", "time_zone": zone},
            headers=admin(),
        )  # fmt: skip
        assert made.status_code == 201, made.text
        scopes = ["ingest", "read", "admin"]
        made = await client.post(
            "/v1/projects/ui-pace/keys", json={"name": "pace", "scopes": scopes}, headers=admin()
        )
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        made = await client.post(
            "/v1/budgets", json={"name": "Daily", "limit_usd": "0.01", "period": "day"},
            headers=bearer(key),
        )  # fmt: skip
        assert made.status_code == 201, made.text
        budget_id = made.json()["id"]
        event = {  # 7,000 in and 1,000 out at the test catalog's prices: 0.009, 90%
            "id": "pace-1", "model": "gpt-test-001", "occurred_at": now.isoformat(),
            "usage": {"input_tokens": 7000, "output_tokens": 1000},
        }  # fmt: skip
        recorded = await client.post("/v1/usage", json=event, headers=bearer(key))
        assert recorded.status_code == 201, recorded.text
    sign_in(browser, site, key)
    browser.get(f"{site.url}/ui/p/ui-pace/budgets/{budget_id}")
    assert browser.find_elements(By.ID, "budget-over") == []
    said = text(browser.find_element(By.ID, "budget-pace"))
    found = SAID.fullmatch(said)
    assert found, said
    assert found["past"], said
    assert 130 <= int(found["share"]) <= 150, said
    _a_forecast(browser, "#budget-pace")
    browser.get(f"{site.url}/ui/p/ui-pace/budgets")
    (row,) = table(browser, "budget-list")
    shown = LISTED.fullmatch(row[8])
    assert shown, row
    assert shown["past"], row
    _a_forecast(browser, "#budget-list tbody")


def _a_forecast(browser: WebDriver, within: str) -> None:
    """The projection in `within` is in the colour of a warning, not bold; nothing there is in
    the red of an overrun."""
    style = browser.execute_script(
        "const e = document.querySelector(arguments[0]); const s = getComputedStyle(e);"
        "return [e.textContent, s.color, s.fontWeight, s.fontStyle];",
        f"{within} .projected-over",
    )
    assert style[1:] == [WARN, "400", "italic"], style
    assert style[0] in ("projected to pass it", "projected to pass the limit"), style
    assert browser.find_elements(By.CSS_SELECTOR, f"{within} .over-budget") == []
    colours = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => getComputedStyle(e).color);",
        f"{within} *",
    )
    assert BAD not in colours, colours
