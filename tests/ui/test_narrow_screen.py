"""At a phone's width (390 CSS pixels), the pages fit the screen: the navigation wraps, so every
link in it can be reached, and no page scrolls sideways (a wide table scrolls in its own box).
Before, "Catalog" was cut off on every project page, and the budget and event pages were wider
than the screen."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .conftest import ADMIN_TOKEN, Site, sign_in, text

pytestmark = pytest.mark.slow

PHONE = (390, 844)


@pytest.fixture
def phone(browser: WebDriver) -> Iterator[WebDriver]:
    size = browser.get_window_size()
    browser.set_window_size(*PHONE)
    try:
        yield browser
    finally:
        browser.set_window_size(size["width"], size["height"])


def test_every_page_fits_a_phone_s_width(phone: WebDriver, site: Site) -> None:
    sign_in(phone, site, site.keys["a"])
    wrong = []
    for path in ("/ui/p/ui-a/", "/ui/p/ui-a/explore", "/ui/p/ui-a/events/",
                 f"/ui/p/ui-a/events/{site.event_ids['a-3']}", "/ui/p/ui-a/budgets",
                 f"/ui/p/ui-a/budgets/{site.budget_id}", "/ui/p/ui-a/keys", "/ui/catalog/",
                 "/ui/catalog/gpt-test-003"):  # fmt: skip
        phone.get(site.url + path)
        width, page = phone.execute_script(
            "return [document.documentElement.clientWidth, document.documentElement.scrollWidth];"
        )
        if page > width:
            wrong.append(f"{path}: {page} px wide on a screen of {width}")
        for link in phone.find_elements(By.CSS_SELECTOR, ".bar nav a"):
            right = phone.execute_script("return arguments[0].getBoundingClientRect().right;", link)
            if right > width:
                wrong.append(f"{path}: the link {link.text!r} ends at {right} px, past {width}")
    assert wrong == [], "\n".join(wrong)


def test_a_budget_s_used_share_is_on_a_phone_s_screen_without_scrolling(
    phone: WebDriver, site: Site
) -> None:
    """On a phone the used share is the last cell of a wide row, beyond the screen's edge: it
    is shown under the budget's name too (and only at that width)."""
    shown = "return getComputedStyle(arguments[0], '::after').content;"
    sign_in(phone, site, site.keys["a"])
    for path, table in (("/ui/p/ui-a/budgets", "budget-list"), ("/ui/p/ui-a/", "budgets")):
        phone.get(site.url + path)
        name = phone.find_element(By.CSS_SELECTOR, f"#{table} tbody th")
        used = name.get_attribute("data-narrow") or ""
        assert re.fullmatch(r"[0-9.]+% used(: [^;]+)?(; committed on pace for .+)?", used), used
        # the pace, when the row has one (a tenth of the month has passed), is there too: its
        # cell is beyond the screen's edge as well
        paces = phone.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr:first-child .pace")
        assert [p.get_attribute("textContent") for p in paces] == (
            [used.partition("; ")[2]] if "; " in used else []
        ), used
        assert phone.execute_script(shown, name) == f'"{used}"', path
        width = phone.execute_script("return document.documentElement.clientWidth;")
        right = phone.execute_script("return arguments[0].getBoundingClientRect().right;", name)
        assert right <= width, (path, right, width)
    phone.set_window_size(1400, 900)
    phone.get(site.url + "/ui/p/ui-a/budgets")
    name = phone.find_element(By.CSS_SELECTOR, "#budget-list tbody th")
    assert phone.execute_script(shown, name) == "none"


def test_an_event_s_cost_is_on_a_phone_s_screen_without_scrolling(
    phone: WebDriver, site: Site
) -> None:
    """The cost is the sixth cell of an event's row, beyond a phone's screen: it is shown under
    the event's id too, as the cost cell writes it (and only at that width)."""
    shown = "return getComputedStyle(arguments[0], '::after').content;"
    sign_in(phone, site, site.keys["a"])
    width = phone.execute_script("return document.documentElement.clientWidth;")
    costs = set()
    for query in ("", "?status=unpriced"):
        phone.get(f"{site.url}/ui/p/ui-a/events/{query}")
        rows = phone.find_elements(By.CSS_SELECTOR, "#events tbody tr")
        assert rows, query
        for row in rows:
            heading = row.find_element(By.CSS_SELECTOR, "th")
            cells = row.find_elements(By.CSS_SELECTOR, "td")
            cost = text(cells[4])
            status = "" if text(cells[3]) != "partially priced" else ", partially priced"
            assert phone.execute_script(shown, heading) == f'"{cost}{status}"'
            right = phone.execute_script(
                "return arguments[0].getBoundingClientRect().right;", heading
            )
            assert right <= width, (query, right, width)
            costs.add(cost)
    assert "unpriced" in costs
    assert sum(c.endswith(" USD") for c in costs) > 10, costs
    phone.set_window_size(1400, 900)
    phone.get(site.url + "/ui/p/ui-a/events/")
    heading = phone.find_element(By.CSS_SELECTOR, "#events tbody th")
    assert phone.execute_script(shown, heading) == "none"


def test_the_operator_s_projects_list_shows_this_month_on_a_phone_s_screen(
    phone: WebDriver, site: Site
) -> None:
    """The months' cells lie beyond a phone's screen: this month is shown under each project's
    name too, and under the total's heading; the caption wraps on the screen (it was as wide
    as the table, its end cut off)."""
    shown = "return getComputedStyle(arguments[0], '::after').content;"
    edge = "return arguments[0].getBoundingClientRect().right;"
    after_edge = (
        "const cell = getComputedStyle(arguments[0]);"
        " return arguments[0].getBoundingClientRect().left + parseFloat(cell.paddingLeft)"
        " + parseFloat(getComputedStyle(arguments[0], '::after').width);"
    )
    sign_in(phone, site, ADMIN_TOKEN)
    phone.get(site.url + "/ui/")
    width = phone.execute_script("return document.documentElement.clientWidth;")
    rows = phone.find_elements(By.CSS_SELECTOR, "#projects tbody tr, #projects tfoot tr")
    assert len(rows) >= 3, len(rows)
    for row in rows:
        heading = row.find_element(By.CSS_SELECTOR, "th")
        month = text(row.find_elements(By.CSS_SELECTOR, "td.num")[0])
        said = heading.get_attribute("data-narrow") or ""
        # the cell's figure (at its column's scale, so compared as a number), "or more" for
        # its lower bound's mark
        figure = month.removesuffix("*").strip()
        if figure == "unpriced":
            assert said == "this month: unpriced", (said, month)
        else:
            # as the page writes amounts: grouped by thousands
            found = re.fullmatch(
                r"this month: ([0-9]{1,3}(?:,[0-9]{3})*(?:\.[0-9]+)?) USD( or more)?", said
            )
            assert found, (said, month)
            assert Decimal(found[1].replace(",", "")) == Decimal(figure.replace(",", "")), (
                said,
                month,
            )
            assert bool(found[2]) == month.endswith("*"), (said, month)
        assert phone.execute_script(shown, heading) == f'"{said}"'
        # the words under the heading end on the screen, though the total's heading spans
        # three columns wider than it
        assert phone.execute_script(after_edge, heading) <= width, said
    total = phone.find_element(By.CSS_SELECTOR, "#projects-total .fits")
    assert phone.execute_script(edge, total) <= width
    caption = phone.find_element(By.ID, "projects-caption")
    assert phone.execute_script(edge, caption) <= width
    # and stays on the screen as the table scrolls sideways in its box
    box = phone.find_element(By.CSS_SELECTOR, "#projects").find_element(By.XPATH, "..")
    assert phone.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth;", box)
    left = phone.execute_script("return arguments[0].getBoundingClientRect().left;", caption)
    phone.execute_script("arguments[0].scrollLeft = 300;", box)
    assert phone.execute_script("return arguments[0].scrollLeft;", box) > 0
    assert (
        phone.execute_script("return arguments[0].getBoundingClientRect().left;", caption) == left
    )
    assert phone.execute_script(edge, caption) <= width
