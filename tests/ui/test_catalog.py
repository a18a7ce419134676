"""The catalog pages: a search lists what `GET /v1/models` lists; a model shows what
`GET /v1/models/{model}` answers, and its price history as a chart with its table: one row and
one point per version, with the prices the calculator uses at that version's time (a price a
version lacks is "none" in the table and a gap in the chart)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import make_settings, replace_settings
from ..reliability.harness import eventually, versioned_document
from ..support.upstream import Upstream
from .conftest import Site, admin, header, shot, sign_in, table, through

pytestmark = pytest.mark.slow


async def api(site: Site, path: str, **params: Any) -> Any:
    async with site.client() as client:
        response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def to_per_token(cell: str) -> str | None:
    """What a price cell of the page says per token (`2.50` per million tokens ->
    `0.0000025`), to compare with the API's exact value; None for a cell without a price."""
    if cell in ("", "none"):
        return None
    return format((Decimal(cell.replace(",", "")) / 1_000_000).normalize(), "f")


def api_price(value: str | None) -> str | None:
    return None if value is None else format(Decimal(value).normalize(), "f")


def as_per_token(rows: list[list[str]], columns: tuple[int, ...]) -> list[list[Any]]:
    return [
        [to_per_token(cell) if i in columns else cell for i, cell in enumerate(row)] for row in rows
    ]


async def test_the_catalog_lists_and_shows_models_as_the_api_does(
    browser: WebDriver, site: Site, screenshots: Path
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    through(browser, browser.find_element(By.LINK_TEXT, "Catalog"))
    search = browser.find_element(By.ID, "m-q")
    search.send_keys("gpt-test-01")
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.query button[type=submit]"))
    shot(browser, screenshots, "catalog")
    listed = (await api(site, "/v1/models", q="gpt-test-01"))["data"]
    assert [m["model"] for m in listed] == [f"gpt-test-01{i}" for i in range(10)]
    assert header(browser, "models")[3:6] == [
        "input per 1M tokens", "output per 1M tokens", "other prices (USD)",
    ]  # fmt: skip
    # the test catalog prices tokens only: no other prices
    assert as_per_token(table(browser, "models"), (3, 4)) == [
        [m["model"], m["provider"], m["mode"] or "", api_price(m["input_cost_per_token"]),
         api_price(m["output_cost_per_token"]), "", str(m["price_version"]), m["valid_from"]]
        for m in listed
    ]  # fmt: skip

    through(browser, browser.find_element(By.LINK_TEXT, "gpt-test-015"))
    shot(browser, screenshots, "model")
    detail = await api(site, "/v1/models/gpt-test-015")
    assert table(browser, "model-prices") == [
        [k, v if isinstance(v, str) else json.dumps(v, sort_keys=True)]
        for k, v in sorted(detail["prices"].items())
    ]
    assert browser.find_element(By.ID, "model-price-version").text == str(detail["price_version"])
    assert header(browser, "model-versions")[3:] == ["input per 1M tokens", "output per 1M tokens"]
    assert as_per_token(table(browser, "model-versions"), (3, 4)) == [
        [str(v["price_version"]), v["valid_from"], v["valid_to"] or "now",
         api_price(detail["prices"]["input_cost_per_token"]),
         api_price(detail["prices"]["output_cost_per_token"])]
        for v in detail["versions"]
    ]  # fmt: skip
    drawn = browser.execute_script(
        "const c = Chart.getChart('history'); return c ? "
        "[c.config.type, c.data.datasets.map(d => d.exact)] : null;"
    )
    assert drawn == ["line", [[r[3] for r in table(browser, "model-versions")],
                              [r[4] for r in table(browser, "model-versions")]]]  # fmt: skip

    browser.get(f"{site.url}/ui/catalog/no-such-model-anywhere")
    assert "404" in browser.find_element(By.CSS_SELECTOR, "main").text


#: A model no other test prices or records: its history grows here, by refreshes.
HISTORY_MODEL = "gpt-test-021"


async def refresh(site: Site, entry: dict[str, Any]) -> None:
    """A refresh of the site's catalog from an upstream that serves the starting catalog with
    HISTORY_MODEL's entry replaced by `entry`: a new price version of that model only."""
    served = json.loads(versioned_document(1))
    served[HISTORY_MODEL] = entry
    upstream = Upstream()
    upstream.start()
    try:
        settings = replace_settings(make_settings(site.database_url),
                                    model_cost_source_url=upstream.url)  # fmt: skip
        upstream.serve(json.dumps(served).encode())
        report = await refresh_catalog(settings.core, settings.costs, force=True, trigger="test")
        assert report.outcome is Outcome.APPLIED, report
    finally:
        upstream.stop()


async def test_a_price_history_of_several_versions_shows_each_versions_prices_as_the_api(
    browser: WebDriver, site: Site, screenshots: Path
) -> None:
    first = json.loads(versioned_document(1))[HISTORY_MODEL]
    without_output = {k: v for k, v in first.items() if k != "output_cost_per_token"}
    await refresh(site, {**without_output, "input_cost_per_token": 3e-06})
    await refresh(site, {**first, "input_cost_per_token": 4e-06, "output_cost_per_token": 5e-06})

    async def served() -> Any:  # the API reloads its catalog within a poll interval
        detail = await api(site, f"/v1/models/{HISTORY_MODEL}")
        return detail if len(detail["versions"]) == 3 else None

    detail = await eventually(served, timeout=30)
    expected = []
    async with site.client() as client:
        for version in detail["versions"]:
            # the prices of each version, as the calculator prices a call of its time
            response = await client.post("/v1/costs/calculate", json={
                "model": HISTORY_MODEL, "at": version["valid_from"],
                "usage": {"input_tokens": 1, "output_tokens": 1},
            })  # fmt: skip
            assert response.status_code == 200, response.text
            priced = response.json()
            assert priced["price_version"] == version["price_version"]
            unit = {c["name"]: c["unit_price"] for c in priced["components"]}
            expected.append([str(version["price_version"]), version["valid_from"],
                             version["valid_to"] or "now", api_price(unit.get("input")),
                             api_price(unit.get("output"))])  # fmt: skip
    assert [row[4] is None for row in expected] == [False, True, False]
    assert len({row[3] for row in expected}) == 3

    sign_in(browser, site, site.keys["a-read"])
    browser.get(f"{site.url}/ui/catalog/{HISTORY_MODEL}")
    shot(browser, screenshots, "model-history")
    shown = table(browser, "model-versions")
    assert [row[4] for row in shown] == [shown[0][4], "none", shown[2][4]]
    assert as_per_token(shown, (3, 4)) == expected
    drawn = browser.execute_script(
        "const c = Chart.getChart('history'); return c ? "
        "[c.data.labels, c.data.datasets.map(d => [d.exact, d.data])] : null;"
    )
    labels, series = drawn
    assert labels == [row[1] for row in expected]
    for column, (exact, points) in zip((3, 4), series, strict=True):
        # the chart's exact values are the table's, per million tokens
        assert [to_per_token(p) if p is not None else None for p in exact] == [
            row[column] for row in expected
        ]
        # a missing price is a gap in the line, not a price of 0
        assert points == [None if p is None else float(p) for p in exact]


async def test_the_list_fits_a_wide_screen_with_long_model_names(
    browser: WebDriver, site: Site
) -> None:
    """A cloud's model names run to 70 characters (`bedrock/ap-northeast-1/1-month-commitment/
    anthropic.claude-instant-v1`): the name wraps, so that the other prices, the version and the
    date stay on a screen of 1280 pixels (they were beyond its edge, in a table wider than it)."""
    names = [f"ui-wide/ap-northeast-{i}/1-month-commitment/anthropic.claude-instant-v{i}"
             for i in range(3)]  # fmt: skip
    async with site.client() as client:
        for i, name in enumerate(names):
            prices = {"input_cost_per_token": "0.0000008", "output_cost_per_token": "0.0000024",
                      "output_cost_per_image": f"0.0{i + 4}"}  # fmt: skip
            override = {"provider": "bedrock_converse_long", "model": name, "reason": "wide",
                        "prices": prices}  # fmt: skip
            added = await client.post("/v1/overrides", headers=admin(), json=override)
            assert added.status_code == 201, added.text
    size = browser.get_window_size()
    browser.set_window_size(1280, 1000)
    try:
        sign_in(browser, site, site.keys["a-read"])
        browser.get(f"{site.url}/ui/catalog/?q=ui-wide")
        assert [row[0] for row in table(browser, "models")] == names
        needed, box = browser.execute_script(
            "const t = document.getElementById('models');"
            " return [t.scrollWidth, t.parentElement.clientWidth];"
        )
        last = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr td:last-child")
        right = [browser.execute_script("return arguments[0].getBoundingClientRect().right;", c)
                 for c in last]  # fmt: skip
        width = browser.execute_script("return document.documentElement.clientWidth;")
    finally:
        browser.set_window_size(size["width"], size["height"])
    assert needed <= box, (needed, box)
    assert max(right) <= width, (right, width)
