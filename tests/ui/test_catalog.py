"""The catalog pages: a search lists what `GET /v1/models` lists; a model shows what
`GET /v1/models/{model}` answers, and its price history as a chart with its table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .conftest import Site, header, shot, sign_in, table, through

pytestmark = pytest.mark.slow


async def api(site: Site, path: str, **params: Any) -> Any:
    async with site.client() as client:
        response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


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
    assert table(browser, "models") == [
        [m["model"], m["provider"], m["mode"] or "", m["input_cost_per_token"] or "",
         m["output_cost_per_token"] or "", str(m["price_version"]), m["valid_from"]]
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
    assert header(browser, "model-versions")[3:] == ["input per token", "output per token"]
    assert table(browser, "model-versions") == [
        [str(v["price_version"]), v["valid_from"], v["valid_to"] or "now",
         detail["prices"]["input_cost_per_token"], detail["prices"]["output_cost_per_token"]]
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
