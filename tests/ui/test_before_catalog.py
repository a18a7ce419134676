"""A call from before this server's price catalog begins is priced with its model's first price
in the catalog, not with the price of its day, which the catalog never had: each such event's
page said so, and now the overview and Explore say it too, but only when what they count holds
such a call (a finance reader of a back-filled history would otherwise take its totals for the
prices of their days).

A project of its own (ui-hist) records them, so that the other tests' figures stay as they are.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .conftest import Site, admin, bearer, project_with_key, sign_in, text

pytestmark = pytest.mark.slow

USAGE = {"input_tokens": 1000, "output_tokens": 100}


async def record(
    site: Site,
    key: str,
    event_id: str,
    model: str,
    at: datetime,
    status: str = "priced",
    usage: dict[str, int] = USAGE,
) -> dict[str, Any]:
    """The recorded event's result (`event_id`, `total`, ...)."""
    event = {"id": event_id, "model": model, "usage": usage, "occurred_at": at.isoformat()}
    async with site.client() as client:
        response = await client.post("/v1/usage", json=event, headers=bearer(key))
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    assert result["pricing_status"] == status, response.text
    return result


async def catalog_began(site: Site) -> datetime:
    """When the catalog's earliest price began, read from the database the API serves."""
    connection = await asyncpg.connect(site.database_url)
    try:
        began: datetime = await connection.fetchval("SELECT min(valid_from) FROM ai_model_costs")
    finally:
        await connection.close()
    return began


def note(browser: WebDriver) -> str | None:
    found = browser.find_elements(By.ID, "catalog-began")
    return text(found[0]) if found else None


def exact_instant(browser: WebDriver) -> str:
    """The exact instant in UTC that the note's time holds (its `datetime`)."""
    time_element = browser.find_element(By.CSS_SELECTOR, "#catalog-began time")
    return time_element.get_attribute("datetime") or ""


async def test_the_summaries_say_when_they_count_calls_from_before_the_catalog(
    browser: WebDriver, site: Site
) -> None:
    key = await project_with_key(site, "ui-hist", "History Imports", ["ingest", "read"])
    began = await catalog_began(site)
    now = datetime.now(UTC)
    assert began < now, (began, now)  # seeded when the site started
    # only calls of after the catalog began: nothing to say
    await record(site, key, "new-1", "gpt-test-001", now)
    sign_in(browser, site, key)
    assert note(browser) is None
    browser.get(f"{site.url}/ui/p/ui-hist/explore")
    assert note(browser) is None

    # a call of two days before it began, imported now: priced with the first price
    old = await record(site, key, "old-1", "gpt-test-002", began - timedelta(days=2))
    browser.get(f"{site.url}/ui/p/ui-hist/")
    said = note(browser)
    assert said is not None
    # how many and how much, so that a reader knows what part of the figures it is
    assert said.startswith(f"1 call counted here ({old['total']} USD) is from before "), said
    assert "priced with the first price the catalog has for its model" in said
    # no remedy is offered: an override cannot begin before the source's first price
    assert "override back-dated" not in said
    assert "reprice" not in said
    assert exact_instant(browser) == began.astimezone(UTC).isoformat().replace("+00:00", "Z")
    # Explore: a window or a filter that keeps the old call says so; one that does not, not
    day = began.date()
    for query, expected in (
        (f"from={day - timedelta(days=3)}&to={day + timedelta(days=1)}", True),
        (f"from={day - timedelta(days=3)}&to={day + timedelta(days=1)}&model=gpt-test-001",
         False),
        (f"from={day - timedelta(days=3)}&to={day + timedelta(days=1)}&model=gpt-test-002",
         True),
        (f"from={day - timedelta(days=1)}&to={day + timedelta(days=1)}", False),
        (f"from={day - timedelta(days=3)}&to={day - timedelta(days=1)}", True),
    ):  # fmt: skip
        browser.get(f"{site.url}/ui/p/ui-hist/explore?{query}&tz=UTC")
        assert (note(browser) is not None) is expected, query


async def test_an_unpriced_call_from_before_the_catalog_is_not_said_to_be_priced(
    browser: WebDriver, site: Site
) -> None:
    """A call of a model nobody prices, from before the catalog began, was priced with nothing:
    the summaries do not say it had the first price (its page says it is unpriced)."""
    key = await project_with_key(site, "ui-hist-u", "History Unpriced", ["ingest", "read"])
    began = await catalog_began(site)
    await record(site, key, "old-u", "nobody-prices-this-3", began - timedelta(days=2),
                 status="unpriced")  # fmt: skip
    sign_in(browser, site, key)
    assert note(browser) is None
    day = began.date()
    browser.get(f"{site.url}/ui/p/ui-hist-u/explore?from={day - timedelta(days=3)}"
                f"&to={day + timedelta(days=1)}&tz=UTC")  # fmt: skip
    assert note(browser) is None
    # a priced one of the same time is said, and Explore's status filter keeps it apart
    await record(site, key, "old-p", "gpt-test-003", began - timedelta(days=2))
    browser.get(f"{site.url}/ui/p/ui-hist-u/")
    assert note(browser) is not None
    for status, expected in (("unpriced", False), ("priced", True)):
        browser.get(f"{site.url}/ui/p/ui-hist-u/explore?from={day - timedelta(days=3)}"
                    f"&to={day + timedelta(days=1)}&tz=UTC&status={status}")  # fmt: skip
        assert (note(browser) is not None) is expected, status


async def test_an_event_from_before_its_model_s_first_price_is_not_told_to_get_an_override(
    browser: WebDriver, site: Site
) -> None:
    """A partly priced call from before its model's first price: its page said to set a price
    override back-dated to its time and reprice, which the API refuses (an override may not
    begin before the source's first price of its model). It says that none can reach it."""
    key = await project_with_key(site, "ui-hist-p", "History Partial", ["ingest", "read"])
    began = await catalog_began(site)
    old = await record(site, key, "old-partly", "gpt-test-004", began - timedelta(days=2),
                       status="partially_priced", usage={**USAGE, "images": 2})  # fmt: skip
    new = await record(site, key, "new-partly", "gpt-test-004", datetime.now(UTC),
                       status="partially_priced", usage={**USAGE, "images": 2})  # fmt: skip
    sign_in(browser, site, key)
    browser.get(f"{site.url}/ui/p/ui-hist-p/events/{old['event_id']}")
    step = text(browser.find_element(By.ID, "event-next-step"))
    assert "no price override can reach it" in step, step
    assert "back-dated" not in step, step
    browser.get(f"{site.url}/ui/p/ui-hist-p/events/{new['event_id']}")
    step = text(browser.find_element(By.ID, "event-next-step"))
    assert "back-dated to the time of this call" in step, step
    # the override the old page advised is indeed refused
    async with site.client() as client:
        refused = await client.post("/v1/overrides", headers=admin(), json={
            "provider": "openai", "model": "gpt-test-004", "reason": "back-dated",
            "prices": {"input_cost_per_image": "0.01"},
            "valid_from": (began - timedelta(days=3)).isoformat(),
        })  # fmt: skip
    assert refused.status_code == 422, refused.text
    assert "before the catalog's first price" in refused.json()["detail"], refused.text
