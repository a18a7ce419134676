"""The budget and key pages as someone who answers for the money reads them: a budget past its
limit says so in words (and in red), on its page, in the budgets list and on the overview; an
alert's state is in words; amounts are exact with no zeros added; deleting a budget and revoking
a key each ask first, on a page of their own that works without JavaScript.

A project of its own (ui-fin), so that the other tests' budgets and keys stay as they read them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from ..reliability.harness import eventually
from .conftest import (
    Site,
    admin,
    bearer,
    budget_table,
    project_with_key,
    shot,
    sign_in,
    table,
    text,
    through,
)
from .test_security import CSRF_FIELD, SESSION, cookie_of, http_sign_in

pytestmark = pytest.mark.slow

#: The colour of errors in the style sheet (`--bad`), as the browser computes it.
BAD: Final = "rgb(164, 14, 38)"
#: Budgets of ui-fin: (name, limit, the team it counts, input and output tokens of its usage).
#: The test catalog prices a token 0.000001 in and 0.000002 out.
BUDGETS: Final = [
    ("Over cap", "0.01", "over", 10_000, 1_000),  # 0.012: 120%, 0.002 past its limit
    ("Near cap", "0.01", "near", 7_000, 1_000),  # 0.009: 90%
    ("Big cap", "1000", "nobody", 0, 0),  # nothing used: 1,000 remaining
]


async def _ok(response: Any) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()


async def _alerts(site: Site, key: str, budget_id: int) -> list[dict[str, Any]]:
    async with site.client() as client:
        response = await client.get(f"/v1/budgets/{budget_id}/alerts", headers=bearer(key))
    assert response.status_code == 200, response.text
    alerts: list[dict[str, Any]] = response.json()["alerts"]
    return alerts


@pytest.fixture(scope="module")
async def fin(site: Site) -> dict[str, Any]:
    """ui-fin with an admin key and a read key, its three budgets (a total each, without a
    webhook) as the API answers them once their usage is counted and their alerts made."""
    async with site.client() as client:
        await _ok(await client.post("/v1/projects", json={
            "slug": "ui-fin", "name": "Finance Review", "time_zone": "America/New_York",
        }, headers=admin()))  # fmt: skip
        keys = {}
        for name, scopes in (("fin", ["ingest", "read", "admin"]), ("fin-read", ["read"])):
            made = await _ok(await client.post("/v1/projects/ui-fin/keys", json={
                "name": name, "scopes": scopes,
            }, headers=admin()))  # fmt: skip
            keys[name] = made["key"]
        key = keys["fin"]
        ids = {}
        for name, limit, team, _, _ in BUDGETS:
            made = await _ok(await client.post("/v1/budgets", json={
                "name": name, "limit_usd": limit, "period": "total", "tags": {"team": team},
            }, headers=bearer(key)))  # fmt: skip
            ids[name] = made["id"]
        at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        events = [
            {"id": f"fin-{team}", "model": "gpt-test-001", "occurred_at": at,
             "tags": {"team": team}, "usage": {"input_tokens": i, "output_tokens": o}}
            for _, _, team, i, o in BUDGETS if i
        ]  # fmt: skip
        await _ok(await client.post("/v1/usage", json={"events": events}, headers=bearer(key)))
    # the crossings of 50, 80 and 100% (the default thresholds) of Over cap
    await eventually(lambda: _has(site, key, ids["Over cap"], 3), timeout=30)
    async with site.client() as client:
        shown = {
            name: await _ok(await client.get(f"/v1/budgets/{i}", headers=bearer(key)))
            for name, i in ids.items()
        }
    assert shown["Over cap"]["window"]["remaining"] == "-0.002"
    assert shown["Over cap"]["window"]["used_percent"] == "120"
    assert shown["Near cap"]["window"]["used_percent"] == "90"
    return {"keys": keys, "ids": ids, "budgets": shown}


async def _has(site: Site, key: str, budget_id: int, count: int) -> bool:
    return len(await _alerts(site, key, budget_id)) == count


def cells(browser: WebDriver, table_id: str) -> dict[str, dict[str, str]]:
    """Each row of a budgets table by its budget's name, its cells by their column's heading
    (its first word: `limit (USD)` is `limit`)."""
    headings = [
        text(h).split(" ")[0]
        for h in browser.find_elements(By.CSS_SELECTOR, f"#{table_id} thead th")
    ]
    rows = budget_table(browser, table_id)
    return {row[0]: dict(zip(headings, row, strict=True)) for row in rows}


def meter_is_red(browser: WebDriver, selector: str) -> bool:
    """Whether the browser draws the meter in its worst colour: its value past `high` (with
    `optimum` under `low`), as HTML says."""
    found: bool = browser.execute_script(
        "const m = document.querySelector(arguments[0]); return m.value > m.high;", selector
    )
    return found


def colour(browser: WebDriver, selector: str) -> str:
    found: str = browser.execute_script(
        "return getComputedStyle(document.querySelector(arguments[0])).color;", selector
    )
    return found


async def test_a_budget_past_its_limit_says_so_in_words_and_in_red(
    browser: WebDriver, site: Site, fin: dict[str, Any], screenshots: Path
) -> None:
    """Before, 120% used read like 90%: the same amber meter (max and high 100, so its value was
    never past high) and no word of it."""
    sign_in(browser, site, fin["keys"]["fin-read"])
    browser.get(f"{site.url}/ui/p/ui-fin/budgets/{fin['ids']['Over cap']}")
    shot(browser, screenshots, "budget-over")
    over = browser.find_element(By.ID, "budget-over")
    assert text(over) == (
        "Over budget: the current window has spent 0.012 USD, 0.002 USD more than the 0.01 USD "
        "it allows."
    )
    assert colour(browser, "#budget-over") == BAD
    facts = browser.find_element(By.ID, "budget-facts").text
    assert "Remaining\n-0.002 USD" in facts
    assert text(browser.find_element(By.ID, "budget-used")) == "120% over budget by 0.002 USD"
    assert meter_is_red(browser, "#budget-used meter")
    assert colour(browser, "#budget-used .over-budget") == BAD

    browser.get(f"{site.url}/ui/p/ui-fin/budgets/{fin['ids']['Near cap']}")
    assert browser.find_elements(By.ID, "budget-over") == []
    assert text(browser.find_element(By.ID, "budget-used")) == "90%"
    assert not meter_is_red(browser, "#budget-used meter")

    for page, table_id in (("budgets", "budget-list"), ("", "budgets")):  # and the overview
        browser.get(f"{site.url}/ui/p/ui-fin/{page}")
        shot(browser, screenshots, f"budgets-over-{table_id}")
        rows = cells(browser, table_id)
        assert rows["Over cap"]["used"] == "120% over budget by 0.002 USD"
        # a total budget's one window has no start to show (it read 1970-01-01T00:00:00Z, on
        # the project's clock: 1969-12-31 west of UTC)
        assert rows["Over cap"]["window"] == "all time"
        assert rows["Near cap"]["used"] == "90%"
        assert rows["Big cap"]["used"] == "0%"
        meters = f"#{table_id} tbody tr meter"
        red = browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(m => m.value > m.high);",
            meters,
        )
        assert red == [name == "Over cap" for name in rows]
        assert colour(browser, f"#{table_id} .over-budget") == BAD


async def test_an_alerts_state_is_in_words_with_its_code_beside(
    browser: WebDriver, site: Site, fin: dict[str, Any]
) -> None:
    """Before, the state column showed the ledger's code (`no_webhook`)."""
    from aiserver.api.ui.present import ALERT_STATES

    # every state the ledger may write has its words
    connection = await asyncpg.connect(site.database_url)
    try:
        checks = await connection.fetch(
            "SELECT pg_get_constraintdef(oid) AS check FROM pg_constraint "
            "WHERE conrelid = 'budget_alerts'::regclass AND contype = 'c'"
        )
    finally:
        await connection.close()
    (states,) = [
        set(re.findall(r"'([a-z_]+)'", c["check"])) for c in checks if "state" in c["check"]
    ]
    assert states == {"pending", "delivered", "failed", "no_webhook"}
    assert set(ALERT_STATES) == states

    sign_in(browser, site, fin["keys"]["fin-read"])
    browser.get(f"{site.url}/ui/p/ui-fin/budgets/{fin['ids']['Over cap']}")
    alerts = await _alerts(site, fin["keys"]["fin"], fin["ids"]["Over cap"])
    assert [a["state"] for a in alerts] == ["no_webhook"] * 3
    assert [row[3] for row in table(browser, "budget-alerts")] == ["recorded, nobody notified"] * 3
    shown = browser.find_elements(By.CSS_SELECTOR, "#budget-alerts td.state")
    for cell in shown:
        assert cell.get_attribute("data-state") == "no_webhook"
        title = cell.get_attribute("title") or ""
        assert title.startswith("the budget has no webhook")
        assert title.endswith("(state: no_webhook)")
    # when each crossed, on the project's clock as its window is (it was in UTC), the instant
    # in UTC in its <time>
    crossed = browser.find_elements(By.CSS_SELECTOR, "#budget-alerts tbody th time")
    assert [c.get_attribute("datetime") for c in crossed] == [a["crossed_at"] for a in alerts]
    new_york = ZoneInfo("America/New_York")
    assert [text(c) for c in crossed] == [
        datetime.fromisoformat(a["crossed_at"]).astimezone(new_york).isoformat() for a in alerts
    ]


async def test_amounts_are_exact_with_no_zeros_added_and_still_line_up(
    browser: WebDriver, site: Site, fin: dict[str, Any]
) -> None:
    """Before, a limit of 1000 read `1,000.00` in a column with 0.01 (and `1000` on its own
    page), and its remaining `1,000.000` beside -0.002."""
    sign_in(browser, site, fin["keys"]["fin-read"])
    for page, table_id in (("budgets", "budget-list"), ("", "budgets")):
        browser.get(f"{site.url}/ui/p/ui-fin/{page}")
        rows = cells(browser, table_id)
        assert {name: row["limit"] for name, row in rows.items()} == {
            "Over cap": "0.01", "Near cap": "0.01", "Big cap": "1,000",
        }  # fmt: skip
        assert {name: row["remaining"] for name, row in rows.items()} == {
            "Over cap": "-0.002", "Near cap": "0.001", "Big cap": "1,000",
        }  # fmt: skip
        # the decimals 1,000 lacks are a blank of their width, where the others' are: the
        # decimal points line up
        column = list(rows["Big cap"]).index("remaining")
        lefts = browser.execute_script(
            """
            const [table, column] = arguments;
            return [...document.querySelectorAll(`#${table} tbody tr`)].map(row => {
              const cell = row.querySelectorAll('th, td')[column];
              const pad = cell.querySelector('.pad');
              if (pad) return [cell.textContent.trim(), pad.getBoundingClientRect().left, 0];
              const node = cell.firstChild, at = node.textContent.indexOf('.');
              const range = document.createRange();
              range.setStart(node, at);
              range.setEnd(node, at + 1);
              return [cell.textContent.trim(), range.getBoundingClientRect().left,
                      range.getBoundingClientRect().width];
            });
            """,
            table_id,
            column,
        )
        points = {shown: left for shown, left, _ in lefts}
        assert set(points) == {"-0.002", "0.001", "1,000"}
        assert max(points.values()) - min(points.values()) < 1, lefts

    browser.get(f"{site.url}/ui/p/ui-fin/budgets/{fin['ids']['Big cap']}")
    assert browser.find_element(By.ID, "budget-limit").text == "1,000 USD"
    facts = browser.find_element(By.ID, "budget-facts").text
    assert "Remaining\n1,000 USD" in facts
    assert "Committed\n0 USD" in facts


async def test_deleting_a_budget_asks_first_and_says_what_goes_with_it(
    browser: WebDriver, site: Site, fin: dict[str, Any], screenshots: Path
) -> None:
    """Before, "Delete this budget" deleted it, with its alerts, at the first click."""
    key = fin["keys"]["fin"]
    async with site.client() as client:
        made = await _ok(await client.post("/v1/budgets", json={
            "name": "Doomed cap", "limit_usd": "0.001", "period": "total",
            "tags": {"team": "doomed"}, "thresholds": ["50", "100"],
        }, headers=bearer(key)))  # fmt: skip
        call = {"id": "fin-doomed", "model": "gpt-test-001", "tags": {"team": "doomed"},
                "usage": {"input_tokens": 2000, "output_tokens": 0}}  # fmt: skip
        await _ok(await client.post("/v1/usage", json={"events": [call]}, headers=bearer(key)))
    budget_id = made["id"]
    await eventually(lambda: _has(site, key, budget_id, 2), timeout=30)

    async def exists() -> bool:
        async with site.client() as client:
            found = await client.get(f"/v1/budgets/{budget_id}", headers=bearer(key))
        assert found.status_code in (200, 404), found.text
        return found.status_code == 200

    page = f"{site.url}/ui/p/ui-fin/budgets/{budget_id}"
    sign_in(browser, site, key)
    browser.get(page)
    through(browser, browser.find_element(By.ID, "delete-budget"))
    assert browser.current_url.split("?")[0] == f"{page}/delete"
    shot(browser, screenshots, "budget-delete-confirm")
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == "Delete the budget Doomed cap?"
    assert text(browser.find_element(By.ID, "confirm-delete-text")) == (
        "Deleting the budget Doomed cap (limit 0.001 USD, total) deletes its 2 alerts and their "
        "webhook deliveries with it. This cannot be undone. The usage it counted stays recorded."
    )
    assert await exists()  # asking changed nothing

    through(browser, browser.find_element(By.ID, "cancel-delete"))
    assert browser.current_url == page
    assert await exists()

    through(browser, browser.find_element(By.ID, "delete-budget"))
    through(browser, browser.find_element(By.ID, "confirm-delete"))
    landed = urlsplit(browser.current_url)
    assert landed.path == "/ui/p/ui-fin/budgets"
    shot(browser, screenshots, "budget-deleted")
    assert text(browser.find_element(By.ID, "budget-deleted")) == (
        "The budget Doomed cap was deleted, with its 2 alerts."
    )
    assert not await exists()
    assert "Doomed cap" not in [row[0] for row in table(browser, "budget-list")]

    # the message is the server's own: a link cannot make the page say another
    (said,) = parse_qs(landed.query)["deleted"]
    forged = said.replace("Doomed cap", "Over cap")
    for query in (f"deleted={forged}", "deleted=3:Over%20cap", "deleted="):
        browser.get(f"{site.url}/ui/p/ui-fin/budgets?{query}")
        assert browser.find_elements(By.ID, "budget-deleted") == []
    # nor does the message of one project's page say anything on another's (it is signed for
    # its project: before, a link could make ui-a's page say its budget was deleted)
    sign_in(browser, site, site.keys["a"])
    browser.get(f"{site.url}/ui/p/ui-a/budgets?{urlencode({'deleted': said})}")
    assert browser.find_elements(By.ID, "budget-deleted") == []

    async with site.client() as client:
        # a read key is not asked: it may not delete
        reader = {
            "cookie": f"{SESSION}={cookie_of(await http_sign_in(client, fin['keys']['fin-read']))}"
        }
        asked = await client.get(
            f"/ui/p/ui-fin/budgets/{fin['ids']['Near cap']}/delete", headers=reader
        )
        assert asked.status_code == 403


async def test_the_delete_confirmation_works_without_javascript(
    site: Site, fin: dict[str, Any]
) -> None:
    """The pages as plain HTTP (no script runs): the confirmation is a page, its form a POST
    with the session's CSRF token; without the token nothing is deleted."""
    key = fin["keys"]["fin"]
    async with site.client() as client:
        made = await _ok(await client.post("/v1/budgets", json={
            "name": "Plain cap", "limit_usd": "5", "period": "total", "tags": {"team": "plain"},
        }, headers=bearer(key)))  # fmt: skip
        sent = {"cookie": f"{SESSION}={cookie_of(await http_sign_in(client, key))}"}
        path = f"/ui/p/ui-fin/budgets/{made['id']}/delete"
        asked = await client.get(path, headers=sent)
        assert asked.status_code == 200
        assert "<script" not in asked.text
        assert f'<form method="post" action="{path}">' in asked.text
        assert "it has no alerts" in asked.text
        csrf = CSRF_FIELD.search(asked.text)
        assert csrf is not None
        refused = await client.post(path, data={}, headers=sent)
        assert refused.status_code == 403
        assert (
            await client.get(f"/v1/budgets/{made['id']}", headers=bearer(key))
        ).status_code == 200
        deleted = await client.post(path, data={"csrf_token": csrf.group(1)}, headers=sent)
        assert deleted.status_code == 303
        assert deleted.headers["location"].startswith("/ui/p/ui-fin/budgets?deleted=")
        assert (
            await client.get(f"/v1/budgets/{made['id']}", headers=bearer(key))
        ).status_code == 404


async def test_revoking_a_key_asks_first_and_names_the_key(
    browser: WebDriver, site: Site, fin: dict[str, Any]
) -> None:
    """Before, "Revoke" revoked the key at the first click."""
    async with site.client() as client:
        made = await _ok(await client.post("/v1/projects/ui-fin/keys", json={
            "name": "fin-doomed", "scopes": ["read"],
        }, headers=admin()))  # fmt: skip

    async def works() -> bool:
        async with site.client() as client:
            spend = {"from": "2026-01-01", "to": "2026-01-02"}
            answer = await client.get("/v1/spend", params=spend, headers=bearer(made["key"]))
        assert answer.status_code in (200, 401), answer.text
        return answer.status_code == 200

    def row() -> list[str]:
        (found,) = [r for r in table(browser, "key-list") if r[0] == "fin-doomed"]
        return found

    keys = f"{site.url}/ui/p/ui-fin/keys"
    sign_in(browser, site, fin["keys"]["fin"])
    browser.get(keys)
    button = "button[aria-label^='Revoke the key fin-doomed']"
    through(browser, browser.find_element(By.CSS_SELECTOR, button))
    assert browser.current_url.split("?")[0] == f"{keys}/{made['id']}/revoke"
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == "Revoke the key fin-doomed?"
    said = text(browser.find_element(By.ID, "confirm-revoke-text"))
    assert said.startswith(f"Revoking the key fin-doomed ({made['public_id']}, scopes read)")
    assert "every program that sends it is refused" in said
    assert browser.find_elements(By.ID, "confirm-revoke-self") == []
    assert await works()  # asking changed nothing

    through(browser, browser.find_element(By.ID, "cancel-revoke"))
    assert browser.current_url == keys
    assert row()[6] == "active"
    assert await works()

    through(browser, browser.find_element(By.CSS_SELECTOR, button))
    through(browser, browser.find_element(By.ID, "confirm-revoke"))
    assert urlsplit(browser.current_url).path == "/ui/p/ui-fin/keys"
    (said_revoked,) = parse_qs(urlsplit(browser.current_url).query)["revoked"]
    assert text(browser.find_element(By.ID, "key-revoked")) == (
        f"The key fin-doomed ({made['public_id']}) was revoked."
    )
    assert row()[6].startswith("revoked")
    assert not await works()

    # the key one signed in with: the page says that revoking it signs one out
    own = next(k for k in await _key_list(site) if k["name"] == "fin")
    browser.get(f"{keys}/{own['id']}/revoke")
    assert browser.find_element(By.ID, "confirm-revoke-self").text == (
        "This is the key you signed in with: revoking it signs you out."
    )
    # a key that is no key of the project
    browser.get(f"{keys}/999999999/revoke")
    assert "no key 999999999" in browser.page_source
    # the message is signed for its project: on another project's page it says nothing
    sign_in(browser, site, site.keys["a"])
    browser.get(f"{site.url}/ui/p/ui-a/keys?{urlencode({'revoked': said_revoked})}")
    assert browser.find_elements(By.ID, "key-revoked") == []


async def _key_list(site: Site) -> list[dict[str, Any]]:
    async with site.client() as client:
        listed: list[dict[str, Any]] = await _ok(
            await client.get("/v1/projects/ui-fin/keys", headers=admin())
        )
    return listed


async def reserved_budget(
    site: Site, slug: str, name: str, limit: str, estimate: str
) -> tuple[str, dict[str, Any]]:
    """A new project's key, and a hard total budget of `limit` on it holding a reservation of
    `estimate`."""
    key = await project_with_key(site, slug, slug, ["ingest", "read", "admin"])
    async with site.client() as client:
        made = await _ok(await client.post("/v1/budgets", json={
            "name": name, "limit_usd": limit, "period": "total", "hard": True,
        }, headers=bearer(key)))  # fmt: skip
        await _ok(await client.post("/v1/budgets/reserve", json={
            "model": "gpt-test-001", "estimate": estimate,
        }, headers=bearer(key)))  # fmt: skip
    return key, made


async def test_a_budget_whose_room_reservations_hold_is_not_called_over_budget(
    browser: WebDriver, site: Site
) -> None:
    """Committed under the limit and reservations holding the rest: no room is left, but nothing
    was overspent (a reservation released gives its room back). Before, the page said "Over
    budget" from the used share, which counts what is reserved."""
    key, made = await reserved_budget(site, "ui-held", "Held cap", "0.01", "0.01")
    sign_in(browser, site, key)
    browser.get(f"{site.url}/ui/p/ui-held/budgets/{made['id']}")
    assert text(browser.find_element(By.ID, "budget-over")) == (
        "No room left: the current window has spent 0 USD of its 0.01 USD, and reservations "
        "hold 0.01 USD more, not spent yet (a reservation released gives its room back). A hard "
        "budget: reservations past the limit are refused."
    )
    used = text(browser.find_element(By.ID, "budget-used"))
    assert used == "100% held by reservations: 0.01 USD reserved, not spent yet"
    assert "over budget" not in browser.find_element(By.TAG_NAME, "main").text.lower()


async def test_a_budget_with_room_left_is_not_called_full_by_its_rounded_share(
    browser: WebDriver, site: Site
) -> None:
    """1 of 1.00004 is held: 0.00004 of room is left (a reservation of it is admitted), and the
    share, rounded down, reads 99.99%. Before, the page decided "full" from the rounded share and
    said "No room left"; then the share, rounded half to even, read 100% with room left."""
    key, made = await reserved_budget(site, "ui-room", "Nearly", "1.00004", "1")
    async with site.client() as client:
        (listed,) = (await client.get("/v1/budgets", headers=bearer(key))).json()["budgets"]
    assert (listed["window"]["used_percent"], listed["window"]["remaining"]) == ("99.99", "0.00004")
    sign_in(browser, site, key)
    browser.get(f"{site.url}/ui/p/ui-room/budgets/{made['id']}")
    assert browser.find_elements(By.ID, "budget-over") == []
    used = browser.find_element(By.ID, "budget-used")
    assert text(used) == "99.99%"
    assert "over" not in (used.get_attribute("class") or "").split()
    browser.get(f"{site.url}/ui/p/ui-room/budgets")
    assert browser.find_elements(By.CSS_SELECTOR, "#budgets tr.over, #budgets .over-budget") == []
