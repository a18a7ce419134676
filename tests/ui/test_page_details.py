"""What the pages say beside their figures, where a reader could be misled: a budget's committed
amount with the events it counts and how many of them have no price; its window on the
project's clock, as the page says; the events' "First page" that keeps the filters; a tag key
whose rollups are still being rebuilt; and a tag value of the longest kind, which must not push
the figures next to it off the screen.

Project ui-k is on the clock of Pacific/Kiritimati (UTC+14: a window's start is another day in
UTC), has a budget that counts unpriced events, more than a page of them, and a tag key added
to its rolled-up keys whose rebuild no worker runs here (it stays pending)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .conftest import Site, admin, bearer, committed, sign_in, table, text, through

pytestmark = pytest.mark.slow

KIRITIMATI: Final = ZoneInfo("Pacific/Kiritimati")
#: A tag value as long as the ledger takes (MAX_TAG_VALUE), with nowhere to break a line.
LONG_TEAM: Final = "t" * 256
UNPRICED: Final = 105  # more than two pages of the event list (50 each)


async def _ok(response: Any) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.fixture(scope="module")
async def kiritimati(site: Site) -> dict[str, Any]:
    """ui-k and its key, usage and budget; ui-p, whose only rolled-up key waits for its rebuild.
    The budget as the API answers it."""
    now = datetime.now(KIRITIMATI) - timedelta(minutes=5)
    async with site.client() as client:
        for slug, tags in (("ui-k", ["team"]), ("ui-p", [])):
            await _ok(await client.post("/v1/projects", json={
                "slug": slug, "name": f"Project {slug}", "time_zone": "Pacific/Kiritimati",
                "rollup_tags": tags,
            }, headers=admin()))  # fmt: skip
            made = await _ok(await client.post(f"/v1/projects/{slug}/keys", json={
                "name": slug, "scopes": ["ingest", "read", "admin"],
            }, headers=admin()))  # fmt: skip
            site.keys[slug] = made["key"]
        budget = await _ok(await client.post("/v1/budgets", json={
            "name": "Kiritimati month", "limit_usd": "1.00", "period": "month",
        }, headers=bearer(site.keys["ui-k"])))  # fmt: skip
        events = [{
            "id": f"k-unpriced-{i}", "model": "mystery-model-9000",
            "usage": {"input_tokens": 100, "output_tokens": 10},
            "occurred_at": (now - timedelta(seconds=i)).isoformat(),
            "tags": {"team": "search", "feature": "f1"},
        } for i in range(UNPRICED)] + [{
            "id": f"k-priced-{i}", "model": "gpt-test-001",
            "usage": {"input_tokens": 1000, "output_tokens": 100},
            "occurred_at": (now - timedelta(minutes=1, seconds=i)).isoformat(),
            "tags": {"team": LONG_TEAM},
        } for i in range(3)]  # fmt: skip
        await _ok(await client.post("/v1/usage", json={"events": events},
                                    headers=bearer(site.keys["ui-k"])))  # fmt: skip
        # a key added to the rolled-up ones: rolled up once a rebuild made its rollups, which
        # no worker does here
        for slug, tags in (("ui-k", ["team", "feature"]), ("ui-p", ["team"])):
            await _ok(await client.patch(f"/v1/projects/{slug}", json={"rollup_tags": tags},
                                         headers=admin()))  # fmt: skip
        shown = await _ok(await client.get(f"/v1/budgets/{budget['id']}",
                                           headers=bearer(site.keys["ui-k"])))  # fmt: skip
    assert shown["window"]["unpriced_events"] == UNPRICED
    return shown


def on_the_clock(at: str) -> str:
    """An API time (UTC, `Z`) on ui-k's clock, as RFC 3339 writes it with its offset."""
    return datetime.fromisoformat(at).astimezone(KIRITIMATI).isoformat()


def budget_cells(browser: WebDriver, table_id: str) -> dict[str, str]:
    """The budget row's cells by their column's heading."""
    headings = [text(h) for h in browser.find_elements(By.CSS_SELECTOR, f"#{table_id} thead th")]
    (row,) = table(browser, table_id)
    return {heading.split(" ")[0]: cell for heading, cell in zip(headings, row, strict=True)}


async def test_a_budgets_committed_says_how_many_events_it_counts_and_how_many_are_unpriced(
    browser: WebDriver, site: Site, kiritimati: dict[str, Any]
) -> None:
    window = kiritimati["window"]
    said = committed(window)
    assert said.endswith(f" events, {UNPRICED} unpriced)")
    sign_in(browser, site, site.keys["ui-k"])
    assert budget_cells(browser, "budgets")["committed"] == said  # the overview
    browser.get(f"{site.url}/ui/p/ui-k/budgets")
    assert budget_cells(browser, "budget-list")["committed"] == said


async def test_first_page_keeps_the_filters_of_the_list(
    browser: WebDriver, site: Site, kiritimati: dict[str, Any]
) -> None:
    since = (datetime.now(KIRITIMATI) - timedelta(days=3)).date().isoformat()
    filters = {"status": ["unpriced"], "tag": ["team=search"], "from": [since]}
    sign_in(browser, site, site.keys["ui-k"])
    browser.get(f"{site.url}/ui/p/ui-k/events/?status=unpriced&tag=team%3Dsearch&from={since}")
    first = table(browser, "events")
    assert len(first) == 50
    assert not browser.find_elements(By.ID, "first-page")
    through(browser, browser.find_element(By.ID, "next-page"))
    assert len(table(browser, "events")) == 50
    # both links, apart: their text does not run together without the style sheet
    assert text(browser.find_element(By.CSS_SELECTOR, "nav.pages")) == "First page Next page"
    through(browser, browser.find_element(By.ID, "next-page"))
    assert len(table(browser, "events")) == UNPRICED - 100
    assert text(browser.find_element(By.CSS_SELECTOR, "nav.pages")) == "First page"
    through(browser, browser.find_element(By.ID, "first-page"))
    assert parse_qs(urlsplit(browser.current_url).query) == filters
    assert table(browser, "events") == first
    assert browser.find_element(By.ID, "e-status").get_attribute("value") == "unpriced"


async def test_a_budgets_window_is_on_the_projects_clock_as_the_page_says(
    browser: WebDriver, site: Site, kiritimati: dict[str, Any]
) -> None:
    window = kiritimati["window"]
    said = f"{on_the_clock(window['start'])} to {on_the_clock(window['end'])}"
    assert "T00:00:00+14:00 to " in said  # midnight on its clock, with its offset
    assert said.endswith("T00:00:00+14:00")
    sign_in(browser, site, site.keys["ui-k"])
    assert budget_cells(browser, "budgets")["window"] == said  # the overview
    browser.get(f"{site.url}/ui/p/ui-k/budgets")
    assert "on the clock of Pacific/Kiritimati" in text(
        browser.find_element(By.CSS_SELECTOR, "p.help")
    )
    assert budget_cells(browser, "budget-list")["window"] == said
    browser.get(f"{site.url}/ui/p/ui-k/budgets/{kiritimati['id']}")  # the budget's own page
    assert text(browser.find_element(By.ID, "budget-window")) == (
        f"{said} (Pacific/Kiritimati; the end not included: the next window's start)"
    )
    counts_from = text(browser.find_element(By.ID, "budget-counts-from"))
    assert counts_from.startswith(f"{on_the_clock(kiritimati['counts_from'])} (the window")


async def test_a_tag_key_waiting_for_its_rebuild_is_said_to_be_so(
    browser: WebDriver, site: Site, kiritimati: dict[str, Any]
) -> None:
    sign_in(browser, site, site.keys["ui-k"])
    section = text(browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=tags-h]"))
    assert table(browser, "tag-team")  # rolled up: its top values
    pending = text(browser.find_element(By.ID, "tag-feature-pending"))
    assert "feature" in pending
    assert "rebuild" in pending
    assert "rolls up no tags" not in section

    sign_in(browser, site, site.keys["ui-p"])  # its only key waits: it does roll up tags
    section = text(browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=tags-h]"))
    assert "rolls up no tags" not in section
    assert "rebuild" in text(browser.find_element(By.ID, "tag-team-pending"))

    sign_in(browser, site, site.keys["b"])  # ui-b rolls up none
    section = text(browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=tags-h]"))
    assert "rolls up no tags" in section


async def test_a_long_tag_value_leaves_its_figures_on_the_screen(
    browser: WebDriver, site: Site, kiritimati: dict[str, Any]
) -> None:
    sign_in(browser, site, site.keys["ui-k"])
    rows = table(browser, "tag-team")
    assert [row[0] for row in rows] == [LONG_TEAM, "search"]  # the priced one first
    box = browser.find_element(By.ID, "tag-team").find_element(By.XPATH, "..")
    assert "table-box" in (box.get_attribute("class") or "").split()
    right, width = browser.execute_script(
        "const c = document.querySelector('#tag-team tbody tr td');"
        "return [c.getBoundingClientRect().right, document.documentElement.clientWidth];"
    )
    assert right <= width
