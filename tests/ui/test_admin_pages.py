"""The budget and key pages: an `admin` key creates, changes and deletes a budget, creates a key
(its secret shown once) and revokes one, each change as the API then reports it; a `read` key
sees the budgets but changes nothing. A budget whose threshold was crossed shows its alert and
every webhook delivery attempt, its thresholds and what is reserved, as the API reports them."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from aiserver.ledger.budgets.alerts.delivery import Schedule, deliver_due

from ..conftest import TEST_SECRET_BOX as BOX
from ..reliability.harness import eventually
from ..support.receiver import Receiver
from .conftest import (
    Site,
    admin,
    bearer,
    budget_table,
    committed,
    shot,
    sign_in,
    table,
    text,
    through,
)
from .test_security import CSRF_FIELD, SESSION, cookie_of, http_sign_in

pytestmark = pytest.mark.slow


async def api_budget(site: Site, budget_id: int, key: str = "a") -> tuple[int, dict[str, Any]]:
    async with site.client() as client:
        response = await client.get(f"/v1/budgets/{budget_id}", headers=bearer(site.keys[key]))
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

    through(browser, browser.find_element(By.ID, "delete-budget"))  # asks first
    assert (await api_budget(site, budget_id))[0] == 200
    through(browser, browser.find_element(By.ID, "confirm-delete"))
    assert browser.current_url.startswith(f"{site.url}/ui/p/ui-a/budgets?deleted=")
    shot(browser, screenshots, "budgets")
    assert [row[0] for row in table(browser, "budget-list")] == ["Monthly cap"]
    assert (await api_budget(site, budget_id))[0] == 404


async def test_an_admin_key_creates_a_key_shown_once_and_revokes_it(
    browser: WebDriver, site: Site, screenshots: Path
) -> None:
    sign_in(browser, site, site.keys["a"])
    through(browser, browser.find_element(By.LINK_TEXT, "Keys"))
    fill(browser, "k-name", "ci-reader")
    year = date.today().year + 1
    fill(browser, "k-expires", f"{year}-01-01")  # a date: its midnight on ui-a's clock (Berlin)
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
        # the key's times on the project's clock, to the second, as the other pages show
        # times (they were in UTC with microseconds, and a date typed was UTC's midnight)
        assert row[4] == f"{year}-01-01T00:00:00+01:00"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0[12]:00", row[3]), row[3]
        keys = (await client.get("/v1/projects/ui-a/keys", headers=bearer(site.keys["a"]))).json()
        (listed,) = [k for k in keys if k["name"] == "ci-reader"]
        assert listed["expires_at"] == f"{year - 1}-12-31T23:00:00Z"
        through(
            browser,
            browser.find_element(By.CSS_SELECTOR, "button[aria-label^='Revoke the key ci-reader']"),
        )
        through(browser, browser.find_element(By.ID, "confirm-revoke"))  # asked first
        (row,) = [r for r in table(browser, "key-list") if r[0] == "ci-reader"]
        assert row[6].startswith("revoked")
        shot(browser, screenshots, "keys")
        assert (
            await client.get("/v1/spend", params=spend, headers=bearer(made))
        ).status_code == 401


FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')


async def test_a_new_key_form_sent_twice_makes_one_key(site: Site) -> None:
    """Before, the browser's refresh of the page that shows a new key sent its form again and
    made a second key (its secret shown, the first one's lost)."""
    async with site.client() as client:
        sent = {"cookie": f"{SESSION}={cookie_of(await http_sign_in(client, site.keys['a']))}"}
        page = await client.get("/ui/p/ui-a/keys", headers=sent)
        csrf, token = CSRF_FIELD.search(page.text), FORM_TOKEN.search(page.text)
        assert csrf is not None, page.text
        assert token is not None, page.text
        form = {"csrf_token": csrf.group(1), "form_token": token.group(1),
                "name": "sent-twice", "scopes": "read"}  # fmt: skip
        first = await client.post("/ui/p/ui-a/keys", data=form, headers=sent)
        assert first.status_code == 201, first.text
        assert 'id="new-key-text"' in first.text
        again = await client.post("/ui/p/ui-a/keys", data=form, headers=sent)
        assert again.status_code == 200, again.text
        assert 'id="new-key-text"' not in again.text
        assert "ais_" not in again.text
        listed = (await client.get("/v1/projects/ui-a/keys", headers=bearer(site.keys["a"]))).json()
        (made,) = [k for k in listed if k["name"] == "sent-twice"]
        assert f"<code>{made['public_id']}</code>" in again.text  # the key it made, named
        # the answer's own form has a new token: it makes another key
        fresh = FORM_TOKEN.search(again.text)
        assert fresh is not None
        assert fresh.group(1) != token.group(1)
        other = await client.post("/ui/p/ui-a/keys", headers=sent,
                                  data={**form, "form_token": fresh.group(1)})  # fmt: skip
        assert other.status_code == 201
        # a form without a token (a page from before tokens) still makes its key
        bare = {k: v for k, v in form.items() if k != "form_token"}
        assert (await client.post("/ui/p/ui-a/keys", data=bare, headers=sent)).status_code == 201
        listed = (await client.get("/v1/projects/ui-a/keys", headers=bearer(site.keys["a"]))).json()
        assert len([k for k in listed if k["name"] == "sent-twice"]) == 3


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


async def api_alerts(site: Site, budget_id: int) -> list[dict[str, Any]]:
    async with site.client() as client:
        response = await client.get(f"/v1/budgets/{budget_id}/alerts",
                                    headers=bearer(site.keys["c"]))  # fmt: skip
    assert response.status_code == 200, response.text
    alerts: list[dict[str, Any]] = response.json()["alerts"]
    return alerts


def list_row(budget: dict[str, Any]) -> list[str]:
    """The budget's row of the budget list, from the API's answer for it."""
    window = budget["window"]
    return [budget["name"], " ".join(f"{k}={v}" for k, v in budget["tags"].items()),
            budget["period"], f"{window['start']} to {window['end']}", budget["limit_usd"],
            committed(window), window["reserved"], window["remaining"],
            f"{window['used_percent']}%", ", ".join(f"{t}%" for t in budget["thresholds"]),
            "yes" if budget["hard"] else "no"]  # fmt: skip


async def test_a_crossed_budget_shows_its_alert_deliveries_reserve_and_changes(
    browser: WebDriver, site: Site, screenshots: Path
) -> None:
    receiver = Receiver(script=[500])  # the first attempt fails, the retry is answered 200
    receiver.start()
    try:
        async with site.client() as client:
            made = await client.post("/v1/budgets", headers=bearer(site.keys["c"]), json={
                "name": "Alerts daily", "limit_usd": "0.003", "period": "day",
                "tags": {"team": "alerts"}, "thresholds": ["50"], "webhook_url": receiver.url,
            })  # fmt: skip
            assert made.status_code == 201, made.text
            budget_id = made.json()["id"]
            call = {"id": "alert-1", "model": "gpt-test-000", "tags": {"team": "alerts"},
                    "usage": {"input_tokens": 1000, "output_tokens": 500}}  # fmt: skip
            recorded = await client.post("/v1/usage", headers=bearer(site.keys["c"]),
                                         json={"events": [call]})  # fmt: skip
            assert recorded.status_code in (200, 201), recorded.text
        (alert,) = await eventually(lambda: api_alerts(site, budget_id), timeout=30)
        assert alert["state"] == "pending"

        # what the task runner's delivery job does, now and once the retry is due
        pool = await asyncpg.create_pool(site.database_url, min_size=1, max_size=2)
        try:
            schedule = Schedule(jitter=0, timeout=5.0)
            first = await deliver_due(pool, ("127.0.0.1",), secret_box=BOX, schedule=schedule)
            later = datetime.now(UTC) + schedule.first_retry
            retried = await deliver_due(pool, ("127.0.0.1",), secret_box=BOX, schedule=schedule,
                                        clock=lambda: later)  # fmt: skip
        finally:
            await pool.close()
        assert (first.attempts, retried.delivered) == (1, 1)
    finally:
        receiver.stop()
    assert [r.answered for r in receiver.received] == [500, 200]
    (alert,) = await api_alerts(site, budget_id)
    assert (alert["state"], len(alert["deliveries"])) == ("delivered", 2)

    sign_in(browser, site, site.keys["c"])
    browser.get(f"{site.url}/ui/p/ui-c/budgets/{budget_id}")
    shot(browser, screenshots, "budget-alerts")
    attempts = "; ".join(
        f"attempt {d['attempt']} at {d['attempted_at']}: "
        f"{d['status_code'] if d['status_code'] is not None else d['error'] or 'no answer'}"
        for d in alert["deliveries"]
    )
    assert table(browser, "budget-alerts") == [[
        alert["crossed_at"], f"{alert['threshold_percent']}%", f"{alert['committed_usd']} USD",
        "notification delivered", attempts,
    ]]  # fmt: skip
    state = browser.find_element(By.CSS_SELECTOR, "#budget-alerts td.state")
    assert state.get_attribute("data-state") == alert["state"]
    assert alert["committed_usd"] != "0"
    # the webhook's address: whole for this admin key, its origin only for a read key (a
    # hook's path is often its credential: a read key's page showed it whole)
    assert text(browser.find_element(By.ID, "budget-webhook")) == receiver.url
    async with site.client() as client:
        made_key = await client.post("/v1/projects/ui-c/keys", headers=admin(),
                                     json={"name": "c-reader", "scopes": ["read"]})  # fmt: skip
    assert made_key.status_code == 201, made_key.text
    sign_in(browser, site, made_key.json()["key"])
    browser.get(f"{site.url}/ui/p/ui-c/budgets/{budget_id}")
    origin = receiver.url.split("/hooks/")[0]
    assert text(browser.find_element(By.ID, "budget-webhook")).startswith(f"{origin}/… (the rest")
    assert "hooks/budget" not in browser.page_source
    assert not browser.find_elements(By.ID, "budget-previous-secret")  # none replaced yet
    sign_in(browser, site, site.keys["c"])
    # a new secret for the same address: the page says until when the old one signs too
    async with site.client() as client:
        renewed = await client.patch(f"/v1/budgets/{budget_id}", headers=bearer(site.keys["c"]),
                                     json={"webhook_url": receiver.url})  # fmt: skip
    assert renewed.status_code == 200, renewed.text
    until = datetime.fromisoformat(renewed.json()["webhook_previous_secret_until"])
    browser.get(f"{site.url}/ui/p/ui-c/budgets/{budget_id}")
    said = text(browser.find_element(By.ID, "budget-previous-secret"))
    assert said.startswith(
        "(its signing secret was changed: the one it replaced signs each delivery too until "
        f"{until:%Y-%m-%dT%H:%M}"
    ), said

    # the change form: name, thresholds and hard, each as the API then reports them
    fill(browser, "c-name", "Alerts daily (hard)")
    fill(browser, "c-thresholds", "50, 80, 95")
    browser.find_element(By.CSS_SELECTOR, "input[name=hard]").click()
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.query button[type=submit]"))
    status, changed = await api_budget(site, budget_id, "c")
    assert status == 200
    assert (changed["name"], changed["thresholds"], changed["hard"]) == (
        "Alerts daily (hard)", ["50", "80", "95"], True
    )  # fmt: skip
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == f"Budget {changed['name']}"
    assert browser.find_element(By.ID, "budget-limit").text == (
        f"{changed['limit_usd']} USD (hard: reservations past it are refused)"
    )
    facts = browser.find_element(By.ID, "budget-facts").text
    assert f"Alert thresholds\n{', '.join(t + '%' for t in changed['thresholds'])}" in facts
    # where it counts from, as the API writes it: the start of the window it was made in
    counts_from = browser.find_element(By.ID, "budget-counts-from").text
    assert counts_from.startswith(f"{changed['counts_from']} (the window it was made in")
    assert changed["counts_from"] <= changed["window"]["start"]
    # a window's end is the next one's start, which it does not count: the page says so
    window = browser.find_element(By.ID, "budget-window").text
    assert window.endswith("; the end not included: the next window's start)"), window

    # a hard budget holds what a coming call reserves: the reserved column says how much
    async with site.client() as client:
        held = await client.post("/v1/budgets/reserve", headers=bearer(site.keys["c"]), json={
            "model": "gpt-test-000", "tags": {"team": "alerts"}, "estimate": "0.0005",
        })  # fmt: skip
        assert held.status_code == 201, held.text
    status, reserved = await api_budget(site, budget_id, "c")
    assert reserved["window"]["reserved"] != "0"
    browser.refresh()
    facts = browser.find_element(By.ID, "budget-facts").text
    assert f"Reserved\n{reserved['window']['reserved']} USD" in facts
    through(browser, browser.find_element(By.LINK_TEXT, "All budgets"))
    assert budget_table(browser, "budget-list") == [list_row(reserved)]
    # the list's "hard" column is said in words above it
    assert "A hard budget refuses a reservation" in text(
        browser.find_element(By.CSS_SELECTOR, "p.help")
    )
