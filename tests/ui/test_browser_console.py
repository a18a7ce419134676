"""No page of the dashboard leaves an error in the browser's console: no request of it fails (a
missing icon, style sheet or script), no script throws, and the Content-Security-Policy blocks
nothing that the page asks for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from .conftest import ADMIN_TOKEN, Site, sign_in

pytestmark = pytest.mark.slow


async def test_every_page_names_its_icon_and_the_icon_is_served(site: Site) -> None:
    """A browser asks for /favicon.ico (a 404) unless the page names its icon."""
    async with site.client() as client:
        page = await client.get("/ui/sign-in")
        icon = await client.get("/ui/static/favicon.svg")
    assert '<link rel="icon" href="/ui/static/favicon.svg" type="image/svg+xml">' in page.text
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.content.startswith(b"<svg ")


def console_errors(browser: WebDriver) -> list[str]:
    """The console's errors since the last call (reading the log empties it)."""
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.parametrize("path", ["/ui/sign-in", "/ui/p/ui-a/", "/ui/p/ui-a/explore",
                                  "/ui/p/ui-a/explore?from={month}&to={tomorrow}&bucket=day"
                                  "&group_by=model",
                                  "/ui/p/ui-a/events/", "/ui/p/ui-a/events/{event}",
                                  "/ui/p/ui-a/budgets", "/ui/p/ui-a/budgets/{budget}",
                                  "/ui/p/ui-a/keys", "/ui/", "/ui/catalog/",
                                  "/ui/catalog/gpt-test-003"])  # fmt: skip
def test_a_page_leaves_no_error_in_the_browser_console(
    browser: WebDriver, site: Site, path: str
) -> None:
    if path == "/ui/":  # the operator's project picker
        sign_in(browser, site, ADMIN_TOKEN)
    elif path != "/ui/sign-in":
        sign_in(browser, site, site.keys["a"])
    console_errors(browser)  # what signing in left: the pages before this one
    today = datetime.now(UTC).date()
    browser.get(site.url + path.format(event=site.event_ids["a-unpriced"], budget=site.budget_id,
                                       month=today - timedelta(days=30),
                                       tomorrow=today + timedelta(days=1)))  # fmt: skip
    assert browser.find_elements("css selector", "main"), browser.page_source[:500]
    assert console_errors(browser) == []
