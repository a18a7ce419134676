"""Amounts of a thousand dollars and more, in a real browser: grouped by thousands on every page
that shows them (the overview's headline and tables, the event list, an event's components), and
each still the API's exact amount once its grouping is set aside.

A project of its own (ui-big) spends them, so that the other tests' figures stay below 1,000.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .conftest import Site, at_scale, bearer, project_with_key, shot, sign_in, table, text

pytestmark = pytest.mark.slow

#: A figure as the pages write it: the whole part in groups of three, then its decimals.
GROUPED: Final = re.compile(r"-?[0-9]{1,3}(?:,[0-9]{3})*(?:\.[0-9]+)?")
#: The test catalog's prices per token: input 0.000001, output 0.000002 (every gpt-test model).
EVENTS: Final = [
    ("big-1", "gpt-test-031", 1_234_567_891, 0),  # 1,234.567891
    ("big-2", "gpt-test-032", 20_000_000_000, 1_500_000_000),  # 20,000 + 3,000
    ("big-3", "gpt-test-033", 1_000, 10),  # 0.00102
]


def ungrouped(cell: str) -> str:
    """A grouped figure with its grouping set aside, after checking that it is grouped right."""
    figure = cell.removesuffix(" USD")
    assert GROUPED.fullmatch(figure), cell
    return figure.replace(",", "")


@pytest.fixture(scope="module")
async def big(site: Site) -> dict[str, Any]:
    """Project ui-big with its read key, and what its three events recorded."""
    secret = await project_with_key(site, "ui-big", "Big Spender", ["ingest", "read"])
    async with site.client() as client:
        at = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        events = [
            {"id": name, "model": model, "occurred_at": at,
             "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out}}
            for name, model, tokens_in, tokens_out in EVENTS
        ]  # fmt: skip
        recorded = await client.post("/v1/usage", json={"events": events}, headers=bearer(secret))
        assert recorded.status_code == 200, recorded.text
        results = recorded.json()["results"]
    assert [r["total"] for r in results] == ["1234.567891", "23000", "0.00102"]
    return {"key": secret, "results": results}


async def test_amounts_past_a_thousand_are_grouped_and_exact_on_every_page(
    browser: WebDriver, site: Site, big: dict[str, Any], screenshots: Path
) -> None:
    totals = [r["total"] for r in big["results"]]
    exact_sum = sum(Decimal(t) for t in totals)
    assert exact_sum == Decimal("24234.568911")

    sign_in(browser, site, big["key"])
    shot(browser, screenshots, "overview-large")
    headline = text(browser.find_element(By.CSS_SELECTOR, "#period-1 .amount"))
    assert headline == "≈ 24,234.57 USD"
    # the exact figure beside it: every digit, grouped as well
    exact = text(browser.find_element(By.CSS_SELECTOR, "#period-1 .exact"))
    assert exact == "rounded to the cent; exactly 24,234.568911 USD"

    by_model = {row[0]: row[1] for row in table(browser, "top-models")}
    assert by_model["gpt-test-032"] == "23,000.000000"
    assert [ungrouped(by_model[m]) for _, m, _, _ in EVENTS] == at_scale(totals)

    browser.get(f"{site.url}/ui/p/ui-big/events")
    shot(browser, screenshots, "events-large")
    rows = table(browser, "events")
    assert len(rows) == len(EVENTS)
    shown = [cell for row in rows for cell in row if cell.endswith(" USD")]
    assert sorted(ungrouped(c) for c in shown) == sorted(at_scale(totals))
    assert "23,000.000000 USD" in shown

    today = datetime.now(UTC).date()
    since, until = (today - timedelta(days=2)).isoformat(), (today + timedelta(days=1)).isoformat()
    browser.get(f"{site.url}/ui/p/ui-big/explore?from={since}&to={until}&bucket=day")
    assert text(browser.find_element(By.ID, "answer-total")) == "24,234.568911"

    event_id = next(r["event_id"] for r in big["results"] if r["id"] == "big-2")
    browser.get(f"{site.url}/ui/p/ui-big/events/{event_id}")
    assert text(browser.find_element(By.ID, "event-total")) == "23,000 USD"
    components = {row[0]: row[1:] for row in table(browser, "event-components")}
    # quantity (a count), unit price, cost: each grouped, each the exact value
    assert components["input"] == ["20,000,000,000", "0.000001", "20,000"]
    assert components["output"] == ["1,500,000,000", "0.000002", "3,000"]
