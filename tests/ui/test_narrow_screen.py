"""At a phone's width (390 CSS pixels), the pages fit the screen: the navigation wraps, so every
link in it can be reached, and no page scrolls sideways (a wide table scrolls in its own box).
Before, "Catalog" was cut off on every project page, and the budget and event pages were wider
than the screen."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .conftest import Site, sign_in

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
