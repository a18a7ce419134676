"""The budget and key pages: an `admin` key creates, changes and deletes a budget, creates a key
(its secret shown once) and revokes one, each change as the API then reports it; a `read` key
sees the budgets but changes nothing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from .conftest import Site, bearer, shot, sign_in, table, through
from .test_security import CSRF_FIELD, SESSION, cookie_of, http_sign_in

pytestmark = pytest.mark.slow


async def api_budget(site: Site, budget_id: int) -> tuple[int, dict[str, Any]]:
    async with site.client() as client:
        response = await client.get(f"/v1/budgets/{budget_id}", headers=bearer(site.keys["a"]))
    return response.status_code, response.json()


def fill(browser: WebDriver, field: str, value: str) -> None:
    element = browser.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


async def test_an_admin_key_creates_changes_and_deletes_a_budget(
    browser: WebDriver, site: Site, screenshots: Path
) -> None:
    sign_in(browser, site, site.keys["a"])
    through(browser, browser.find_element(By.LINK_TEXT, "Budgets"))
    fill(browser, "b-name", "Search daily")
    fill(browser, "b-limit", "not money")
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.query button[type=submit]"))
    assert "limit_usd" in browser.find_element(By.ID, "budget-error").text
    assert browser.find_element(By.ID, "b-name").get_attribute("value") == "Search daily"

    fill(browser, "b-limit", "0.02")
    Select(browser.find_element(By.ID, "b-period")).select_by_value("day")
    fill(browser, "b-tags", "team=search")
    fill(browser, "b-thresholds", "50, 90")
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.query button[type=submit]"))
    found = re.fullmatch(rf"{site.url}/ui/p/ui-a/budgets/(\d+)", browser.current_url)
    assert found is not None, browser.current_url
    budget_id = int(found.group(1))
    shot(browser, screenshots, "budget")
    status, made = await api_budget(site, budget_id)
    assert status == 200
    assert (made["name"], made["limit_usd"], made["period"], made["tags"], made["thresholds"]) == (
        "Search daily", "0.02", "day", {"team": "search"}, ["50", "90"]
    )  # fmt: skip
    assert browser.find_element(By.ID, "budget-limit").text == "0.02 USD"
    committed = browser.find_element(By.ID, "budget-committed").text
    assert committed.startswith(f"{made['window']['committed']} USD")

    fill(browser, "c-limit", "0.5")
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.query button[type=submit]"))
    assert browser.find_element(By.ID, "budget-limit").text == "0.5 USD"
    assert (await api_budget(site, budget_id))[1]["limit_usd"] == "0.5"

    through(browser, browser.find_element(By.ID, "delete-budget"))
    assert browser.current_url == f"{site.url}/ui/p/ui-a/budgets"
    shot(browser, screenshots, "budgets")
    assert [row[0] for row in table(browser, "budget-list")] == ["Monthly cap"]
    assert (await api_budget(site, budget_id))[0] == 404


async def test_an_admin_key_creates_a_key_shown_once_and_revokes_it(
    browser: WebDriver, site: Site, screenshots: Path
) -> None:
    sign_in(browser, site, site.keys["a"])
    through(browser, browser.find_element(By.LINK_TEXT, "Keys"))
    fill(browser, "k-name", "ci-reader")
    browser.find_element(By.CSS_SELECTOR, "input[name=scopes][value=read]").click()
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.query button[type=submit]"))
    made = browser.find_element(By.ID, "new-key-text").get_attribute("value") or ""
    assert made.startswith("ais_")
    assert made not in browser.current_url
    async with site.client() as client:
        spend = {"from": "2026-01-01", "to": "2026-01-02"}
        assert (
            await client.get("/v1/spend", params=spend, headers=bearer(made))
        ).status_code == 200
        browser.get(f"{site.url}/ui/p/ui-a/keys")
        assert made not in browser.page_source  # shown once only
        (row,) = [r for r in table(browser, "key-list") if r[0] == "ci-reader"]
        assert row[2:3] == ["read"]
        assert row[6] == "active"
        assert made.split("_")[1] == row[1]  # the public id, never the secret
        through(
            browser,
            browser.find_element(By.CSS_SELECTOR, "button[aria-label^='Revoke the key ci-reader']"),
        )
        (row,) = [r for r in table(browser, "key-list") if r[0] == "ci-reader"]
        assert row[6].startswith("revoked")
        shot(browser, screenshots, "keys")
        assert (
            await client.get("/v1/spend", params=spend, headers=bearer(made))
        ).status_code == 401


async def test_a_read_key_sees_the_budgets_but_changes_nothing(
    browser: WebDriver, site: Site
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    through(browser, browser.find_element(By.LINK_TEXT, "Budgets"))
    assert [row[0] for row in table(browser, "budget-list")] == ["Monthly cap"]
    assert browser.find_elements(By.ID, "b-name") == []  # no form
    assert browser.find_elements(By.LINK_TEXT, "Keys") == []
    async with site.client() as client:
        cookie = cookie_of(await http_sign_in(client, site.keys["a-read"]))
        sent = {"cookie": f"{SESSION}={cookie}"}
        page = await client.get("/ui/p/ui-a/budgets", headers=sent)
        found = CSRF_FIELD.search(page.text)
        assert found is not None
        form = {"csrf_token": found.group(1), "name": "x", "limit_usd": "1", "period": "day"}
        refused = await client.post("/ui/p/ui-a/budgets", data=form, headers=sent)
        assert refused.status_code == 403
        assert "scope &#39;admin&#39;" in refused.text
        assert (await client.get("/ui/p/ui-a/keys", headers=sent)).status_code == 403
        budgets = await client.get("/v1/budgets", headers=bearer(site.keys["a"]))
    assert [b["name"] for b in budgets.json()["budgets"]] == ["Monthly cap"]
