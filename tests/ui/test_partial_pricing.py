"""What a finance reader must not miss, in a real browser: events that are only partly priced
(an image without a price) and events of a model without a price make every headline a lower
bound, and the pages say so beside the figure; a group of unpriced events only reads
"unpriced", never a cost of 0 that reads as free (its CSV cost is empty, as in the usage
export); a week or a month that the window cuts short says "(partial)"; the current month's
headline says "to date".

A project of its own (ui-part) records them, so that the other tests' figures stay as they are.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .conftest import (
    Site,
    admin,
    bearer,
    header,
    project_with_key,
    session_cookie,
    sign_in,
    table,
    text,
)

pytestmark = pytest.mark.slow

USAGE: dict[str, Any] = {"input_tokens": 1000, "output_tokens": 100}


@pytest.fixture(scope="module")
async def part(site: Site) -> str:
    """Project ui-part's read key, after one priced, one partly priced and one unpriced call."""
    secret = await project_with_key(site, "ui-part", "Partly Priced", ["ingest", "read"])
    async with site.client() as client:
        keeper = await client.post("/v1/projects/ui-part/keys", headers=admin(),
                                   json={"name": "budgets", "scopes": ["admin"]})  # fmt: skip
        assert keeper.status_code == 201, keeper.text
        budget = {"name": "Everything", "period": "total", "limit_usd": "10"}
        made = await client.post("/v1/budgets", json=budget, headers=bearer(keeper.json()["key"]))
        assert made.status_code == 201, made.text
        at = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        events = [
            {"id": "priced", "model": "gpt-test-034", "usage": USAGE, "occurred_at": at},
            {"id": "partly", "model": "gpt-test-034", "usage": {**USAGE, "images": 2},
             "occurred_at": at},
            {"id": "unknown", "model": "nobody-prices-this-1", "usage": USAGE, "occurred_at": at},
        ]  # fmt: skip
        recorded = await client.post("/v1/usage", json={"events": events}, headers=bearer(secret))
        assert recorded.status_code == 200, recorded.text
    statuses = [r["pricing_status"] for r in recorded.json()["results"]]
    assert statuses == ["priced", "partially_priced", "unpriced"]
    return secret


def test_the_overview_says_its_figures_are_a_lower_bound_and_why(
    browser: WebDriver, site: Site, part: str
) -> None:
    sign_in(browser, site, part)
    card = browser.find_element(By.ID, "period-1")
    assert text(card.find_element(By.CSS_SELECTOR, "h3")) == "This month (to date)"
    # so far, and as of when: not the whole month, which reads as if it were over
    assert re.search(
        r"^\d{4}-\d\d-01 up to now, \d{4}-\d\d-\d\dT\d\d:\d\d:00(Z|[+-]\d\d:\d\d)"
        r" \(the month ends \d{4}-\d\d-01\) ·",
        text(card.find_element(By.CSS_SELECTOR, "p.sub")),
    ), text(card)
    assert "3 events, 1 unpriced, 1 partially priced" in text(card)
    assert "A lower bound" in text(card.find_element(By.CSS_SELECTOR, ".lower-bound"))
    # the 30 days' tables and chart say their totals are a minimum, and why (they did not)
    said = ("These costs are a lower bound: 1 unpriced event counts 0, and 1 partially priced "
            "event only its priced part (below).")  # fmt: skip
    for where in ("daily-lower-bound", "top-models-lower-bound"):
        assert text(browser.find_element(By.ID, where)) == said
    last = browser.find_element(By.ID, "period-2")
    assert text(last.find_element(By.CSS_SELECTOR, "h3")) == "Last month"
    assert not last.find_elements(By.CSS_SELECTOR, ".lower-bound")

    assert header(browser, "top-models")[3:5] == ["unpriced events", "partially priced events"]
    rows = {row[0]: row for row in table(browser, "top-models")}
    assert rows["gpt-test-034"][2:5] == ["2", "0", "1"]
    assert rows["nobody-prices-this-1"][2:5] == ["1", "1", "0"]
    assert rows["nobody-prices-this-1"][1] == "unpriced"  # its 0 is no price: not free
    unpriced = browser.find_element(By.ID, "unpriced-count")
    assert text(unpriced).startswith("1 unpriced event in the last 30 days")
    partly = browser.find_element(By.ID, "partially-priced-count")
    assert text(partly).startswith("1 partially priced event in the last 30 days:")
    # each count links to the events it counts (the same 30 days), and to all of them
    today = datetime.now(UTC).date()  # the project's clock is UTC
    window = f"from={today - timedelta(days=29)}&to={today + timedelta(days=1)}"
    for where, status in ((unpriced, "unpriced"), (partly, "partially_priced")):
        links = [a.get_attribute("href") or "" for a in where.find_elements(By.TAG_NAME, "a")]
        assert [link.split("/ui/p/ui-part/", 1)[1] for link in links] == [
            f"events/?status={status}&{window}",
            f"events/?status={status}",
        ]
    unpriced.find_element(By.TAG_NAME, "a").click()
    assert browser.find_element(By.NAME, "from").get_attribute("value") == str(
        today - timedelta(days=29)
    )
    listed = text(browser.find_element(By.ID, "events"))
    assert "nobody-prices-this-1" in listed
    assert "gpt-test-034" not in listed


async def test_explore_writes_unpriced_where_no_event_has_a_price_and_the_csv_leaves_it_empty(
    browser: WebDriver, site: Site, part: str
) -> None:
    sign_in(browser, site, part)
    browser.get(f"{site.url}/ui/p/ui-part/explore")
    sub = text(browser.find_element(By.CSS_SELECTOR, "#answer-h ~ p.sub"))
    assert "3 events, 1 unpriced, 1 partially priced" in sub
    assert "lower bound" in text(browser.find_element(By.ID, "answer-lower-bound"))
    columns = header(browser, "rows")
    cost, model = columns.index("cost"), columns.index("model")
    shown = {row[model]: row[cost] for row in table(browser, "rows")}
    assert shown["nobody-prices-this-1"] == "unpriced"
    assert shown["gpt-test-034"] not in ("unpriced", "")
    # and so does the chart's table, in the day of that call (the other days: 0, nothing)
    columns = header(browser, "explore-table")
    unknown = [
        row[columns.index("nobody-prices-this-1")] for row in table(browser, "explore-table")
    ]
    assert unknown.count("unpriced") == 1
    assert {cell for cell in unknown if cell != "unpriced"} <= {"0"}

    cookie = session_cookie(browser)
    async with httpx.AsyncClient(base_url=site.url) as client:
        asked = await client.get(
            "/ui/p/ui-part/explore.csv",
            params={"bucket": "none", "group_by": "model",
                    "from": (date.today() - timedelta(days=40)).isoformat(),
                    "to": (date.today() + timedelta(days=2)).isoformat()},
            headers={"cookie": f"aiserver_ui={cookie['value']}"},
        )  # fmt: skip
    assert asked.status_code == 200, asked.text
    assert asked.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(asked.text)))
    by_model = {row["model"]: row for row in rows}
    assert (by_model["nobody-prices-this-1"]["cost"], by_model["nobody-prices-this-1"]
            ["unpriced_events"]) == ("", "1")  # fmt: skip
    assert by_model["gpt-test-034"]["cost"] == "0.0024"  # two calls' tokens; the images: none
    assert by_model["gpt-test-034"]["partially_priced_events"] == "1"


def test_a_bucket_the_window_cuts_short_says_partial(
    browser: WebDriver, site: Site, part: str
) -> None:
    sign_in(browser, site, part)
    wednesday = date(2026, 11, 4)  # a window from a Wednesday to the Wednesday two weeks later
    browser.get(
        f"{site.url}/ui/p/ui-part/explore?from={wednesday}&to={wednesday + timedelta(days=14)}"
        "&bucket=week&tz=UTC"
    )
    assert [row[0] for row in table(browser, "explore-table")] == [
        "week of 2026-11-04 (partial)", "week of 2026-11-09", "week of 2026-11-16 (partial)",
    ]  # fmt: skip
    browser.get(f"{site.url}/ui/p/ui-part/explore?from=2026-10-01&to=2026-11-15&bucket=month")
    assert [row[0] for row in table(browser, "explore-table")] == [
        "2026-10", "2026-11 (partial)",
    ]  # fmt: skip


def test_a_budget_says_its_committed_cost_is_a_lower_bound_and_why(
    browser: WebDriver, site: Site, part: str
) -> None:
    """The window committed the partly priced call's tokens only: the budget counted its
    unpriced events alone, and its committed cost read as whole beside "0 unpriced" when a
    partly priced call was all there was to miss."""
    sign_in(browser, site, part)
    browser.get(f"{site.url}/ui/p/ui-part/budgets")
    row = browser.find_element(By.CSS_SELECTOR, "#budget-list tbody tr")
    assert "(3 events, 1 unpriced, 1 partially priced)" in text(row)
    browser.find_element(By.LINK_TEXT, "Everything").click()
    assert text(browser.find_element(By.ID, "budget-committed")).endswith(
        " USD (3 events, 1 unpriced, 1 partially priced): a lower bound, since unpriced events "
        "count 0 and partially priced ones count their priced part only"
    )


def test_on_a_phone_an_event_s_cost_says_when_it_is_partially_priced(
    browser: WebDriver, site: Site, part: str
) -> None:
    """At a phone's width the status cell is beyond the screen's edge, as the cost cell is: the
    cost shown under the event's id says "partially priced" when only a part has a price."""
    size = browser.get_window_size()
    browser.set_window_size(390, 844)
    try:
        sign_in(browser, site, part)
        browser.get(f"{site.url}/ui/p/ui-part/events/")
        narrow = {}
        for row in browser.find_elements(By.CSS_SELECTOR, "#events tbody tr"):
            cells = row.find_elements(By.CSS_SELECTOR, "td")
            heading = row.find_element(By.CSS_SELECTOR, "th")
            narrow[text(cells[3])] = (text(cells[4]), heading.get_attribute("data-narrow"))
    finally:
        browser.set_window_size(size["width"], size["height"])
    assert sorted(narrow) == ["partially priced", "priced", "unpriced"], narrow
    cost, said = narrow["partially priced"]
    assert said == f"{cost}, partially priced", narrow
    assert narrow["priced"][1] == narrow["priced"][0]
    assert narrow["unpriced"][1] == "unpriced"


async def test_an_unpriced_event_s_page_says_why_it_has_no_price_version(
    browser: WebDriver, site: Site
) -> None:
    """An event of a known model whose usage has no price (images only, to a model priced per
    token) is unpriced, with the calculator's notes: its page said "Price version: none" beside
    a note of the price the catalog had, which read as a contradiction."""
    key = await project_with_key(site, "ui-pv", "Price Versions", ["ingest", "read"])
    at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    events = [
        {"id": "images", "model": "gpt-test-034", "usage": {"images": 2}, "occurred_at": at},
        {"id": "unknown", "model": "nobody-prices-this-2", "usage": USAGE, "occurred_at": at},
    ]
    async with httpx.AsyncClient(base_url=site.url) as client:
        recorded = await client.post("/v1/usage", json={"events": events}, headers=bearer(key))
    assert recorded.status_code == 200, recorded.text
    results = recorded.json()["results"]
    assert [r["pricing_status"] for r in results] == ["unpriced", "unpriced"], results
    sign_in(browser, site, key)
    said = []
    for result in results:
        browser.get(f"{site.url}/ui/p/ui-pv/events/{result['event_id']}")
        said.append(text(browser.find_element(By.ID, "event-price-version")))
    assert said == [
        "none: no price was applied (the catalog's price of the model has none for what this "
        "call used)",
        "none: no price was applied",
    ]
