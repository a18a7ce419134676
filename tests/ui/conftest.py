"""The dashboard in a real browser: Debian's headless chromium, driven by Selenium through
Debian's own chromedriver (the driver of the same build: no browser or driver is downloaded).

One real `aiserver-api` process serves a throwaway database with a known catalog; the projects,
keys, usage and budgets are made through the HTTP API, as a client makes them. Every test
signs in through the form.

Selenium (with the system's chromedriver) rather than Playwright: it is a pure-Python wheel that
drives the browser the machine has, where Playwright's wheel brings a Node.js runtime of its own
and expects browsers of its own builds.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from ..reliability.harness import (
    ADMIN_TOKEN,
    ApiProcess,
    api_env,
    api_process,
    catalogued_database,
    drop_served,
)

CHROMIUM: Final = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER: Final = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL: Final = (
    "the dashboard tests drive Debian's headless chromium through its chromedriver: install "
    "them with `apt-get install --no-install-recommends chromium chromium-driver` (.ci/run "
    "does), or point CHROMIUM and CHROMEDRIVER at them"
)
SESSION_SECRET: Final = "ui-test-session-secret-0123456789abcdef"
#: Models of the test catalog (versioned_document(1): input 1e-06, output 2e-06 per token).
MODELS: Final = [f"gpt-test-{i:03d}" for i in range(10)]
WAIT_S: Final = 30


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Site:
    """The served API and what was made in it."""

    api: ApiProcess
    keys: dict[str, str]  # name -> secret key
    key_ids: dict[str, int]
    event_ids: dict[str, int] = field(default_factory=dict)  # the client's id -> event_id
    budget_id: int = 0
    database_url: str = ""  # the database the API serves (a test may refresh its catalog)

    @property
    def url(self) -> str:
        return self.api.base_url

    def client(self) -> httpx.AsyncClient:
        return self.api.client()

    def secrets(self) -> list[str]:
        return [*self.keys.values(), ADMIN_TOKEN]


async def _post(client: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str]) -> Any:
    response = await client.post(path, json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def project_with_key(site: Site, slug: str, name: str, scopes: list[str]) -> str:
    """A new project of a test's own (so that the other tests' figures stay as they are) and
    the secret of a key of it with `scopes`."""
    async with site.client() as client:
        await _post(client, "/v1/projects", {"slug": slug, "name": name}, admin())
        made = await _post(client, f"/v1/projects/{slug}/keys",
                           {"name": slug, "scopes": scopes}, admin())  # fmt: skip
    key: str = made["key"]
    return key


def _events(now: datetime) -> list[dict[str, Any]]:
    """Project A's usage: 10 models over the last 30 days (more than the overview's top 8),
    teams, an unpriced model, and enough events for more than one page of the event list."""
    events = []
    for i in range(60):
        model = MODELS[i % len(MODELS)]
        events.append({
            "id": f"a-{i}",
            "model": model,
            "usage": {"input_tokens": 1000 + 37 * i, "output_tokens": 200 + 11 * i},
            "occurred_at": (now - timedelta(days=i % 29, hours=i % 5)).isoformat(),
            "tags": {"team": ("search", "ads", "infra")[i % 3], "feature": f"f{i % 4}"},
        })  # fmt: skip
    events.append({
        "id": "a-unpriced", "model": "mystery-model-9000",
        "usage": {"input_tokens": 500, "output_tokens": 50},
        "occurred_at": (now - timedelta(days=2)).isoformat(), "tags": {"team": "search"},
    })  # fmt: skip
    return events


@pytest.fixture(scope="package")
async def site(
    migrated_template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Site]:
    url = await catalogued_database(migrated_template_url)
    log = tmp_path_factory.mktemp("ui-api") / "api.log"
    env = api_env(
        url,
        upstream_url="http://127.0.0.1:9/unused",  # the API never refreshes the catalog
        UI_SESSION_SECRET=SESSION_SECRET,
        API_KEY_CACHE_SECONDS="0.1",  # a revoked key's session ends at once
        WEBHOOK_ALLOWED_HOSTS="127.0.0.1",  # budget alerts reach the tests' local receiver
    )
    try:
        async with api_process(env, log) as api:
            site = Site(api=api, keys={}, key_ids={}, database_url=url)
            async with api.client() as client:
                await _post(client, "/v1/projects", {
                    "slug": "ui-a", "name": "Alpha Works", "time_zone": "Europe/Berlin",
                    "rollup_tags": ["team"],
                }, admin())  # fmt: skip
                await _post(client, "/v1/projects", {"slug": "ui-b", "name": "Beta Secret"},
                            admin())  # fmt: skip
                # ui-c: for the tests that change what they read (reprices, alerts), so that
                # ui-a's and ui-b's figures stay as the other tests read them
                await _post(client, "/v1/projects", {"slug": "ui-c", "name": "Gamma Changes"},
                            admin())  # fmt: skip
                for name, project, scopes in (
                    ("a", "ui-a", ["ingest", "read", "admin"]),
                    ("a-read", "ui-a", ["read"]),
                    ("a-ingest", "ui-a", ["ingest"]),
                    ("a-revoked", "ui-a", ["read"]),
                    ("b", "ui-b", ["ingest", "read", "admin"]),
                    ("c", "ui-c", ["ingest", "read", "admin"]),
                ):
                    made = await _post(client, f"/v1/projects/{project}/keys",
                                       {"name": name, "scopes": scopes}, admin())  # fmt: skip
                    site.keys[name], site.key_ids[name] = made["key"], made["id"]
                now = datetime.now(UTC) - timedelta(minutes=5)
                recorded = await _post(client, "/v1/usage", {"events": _events(now)},
                                       bearer(site.keys["a"]))  # fmt: skip
                b_events = [{
                    "id": "b-1", "model": "gpt-test-030", "tags": {"team": "beta-hidden-team"},
                    "usage": {"input_tokens": 777, "output_tokens": 77},
                    "occurred_at": (now - timedelta(days=1)).isoformat(),
                }]  # fmt: skip
                recorded_b = await _post(client, "/v1/usage", {"events": b_events},
                                         bearer(site.keys["b"]))  # fmt: skip
                for result in [*recorded["results"], *recorded_b["results"]]:
                    site.event_ids[result["id"]] = result["event_id"]
                budget = await _post(client, "/v1/budgets", {
                    "name": "Monthly cap", "limit_usd": "0.05", "period": "month",
                }, bearer(site.keys["a"]))  # fmt: skip
                site.budget_id = budget["id"]
            yield site
    finally:
        await drop_served(url)


@pytest.fixture(scope="package")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-downloads")


@pytest.fixture(scope="package")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each page's screenshot goes: UI_SCREENSHOTS, else the tests' temporary output."""
    wanted = os.environ.get("UI_SCREENSHOTS")
    path = Path(wanted) if wanted else tmp_path_factory.mktemp("ui-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="package")
def browser_session(downloads: Path) -> Iterator[WebDriver]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (shutil.which(p) or Path(p).exists())]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1600"):  # fmt: skip
        options.add_argument(argument)
    # the console's messages, for test_browser_console.py (driver.get_log("browser"))
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
    })  # fmt: skip
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(browser_session: WebDriver, site: Site) -> Iterator[WebDriver]:
    """The browser, signed out, with no cookies of an earlier test."""
    browser_session.get(f"{site.url}/ui/sign-in")
    browser_session.delete_all_cookies()
    yield browser_session
    browser_session.delete_all_cookies()


def sign_in(browser: WebDriver, site: Site, credential: str) -> None:
    browser.get(f"{site.url}/ui/sign-in")
    browser.find_element(By.ID, "credential").send_keys(credential)
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.sign-in button[type=submit]"))


def through(browser: WebDriver, element: WebElement) -> None:
    """Click `element`, which leads to another page, and wait until that page replaced this
    one, so that nothing is read from the old page after the click (on a busy machine the
    click returns before the navigation has begun).

    The old page is told apart by a mark set on its window, not by an element handle: under
    load chromedriver can answer a handle of a page being replaced with an unknown error
    ('Node with given id does not belong to the document') rather than 'stale element'."""
    browser.execute_script("window.__aiserverOldPage = true;")
    element.click()
    WebDriverWait(browser, WAIT_S, ignored_exceptions=(WebDriverException,)).until(
        lambda driver: driver.execute_script(
            "return document.readyState === 'complete' && window.__aiserverOldPage !== true;"
        )
    )


def session_cookie(browser: WebDriver) -> dict[str, Any]:
    cookie = browser.get_cookie("aiserver_ui")
    assert cookie is not None, browser.get_cookies()
    return dict(cookie)


def table(browser: WebDriver, table_id: str) -> list[list[str]]:
    """A table's body rows as the page shows them (row heading and cells, text only)."""
    rows = browser.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    return [[text(cell) for cell in row.find_elements(By.CSS_SELECTOR, "th, td")] for row in rows]


def half_up(value: Decimal, unit: str) -> Decimal:
    return value.quantize(Decimal(unit), rounding=ROUND_HALF_UP)


def as_said(amount: Decimal) -> Decimal:
    """A projected amount (a budget's pace, the month's) as the pages round it: to the cent, or
    under a dollar to two significant digits where the cent leaves fewer."""
    unit = Decimal("0.01")
    if 0 < amount < 1:
        unit = min(unit, Decimal(1).scaleb(amount.adjusted() - 1))
    return half_up(amount, str(unit))


#: A budget's pace, under its used share in a budgets table (its own test: test_budget_pace.py).
PACE: Final = re.compile(
    r" committed on pace for (?:≈ [0-9]+%|under 1%|just over 100%) by the window's end"
    r"(?:: projected to pass the limit)?$"
)


def budget_table(browser: WebDriver, table_id: str) -> list[list[str]]:
    """A budgets table's rows (`table`), the used share of each without its pace, which moves
    with the clock (test_budget_pace.py checks it)."""
    return [[PACE.sub("", cell) for cell in row] for row in table(browser, table_id)]


def header(browser: WebDriver, table_id: str) -> list[str]:
    return [text(c) for c in browser.find_elements(By.CSS_SELECTOR, f"#{table_id} thead th")]


def committed(window: dict[str, Any]) -> str:
    """A budget window's committed cell, from the API's window: the amount, the events it counts
    and how many of them are unpriced (they count 0 until a price is known)."""
    events = f"{window['events']} event{'' if window['events'] == 1 else 's'}"
    return (f"{window['committed']} ({events}, "
            f"{window['unpriced_events']} unpriced)")  # fmt: skip


def at_scale(amounts: list[str]) -> list[str]:
    """A column of the API's amounts as a table shows them: each with as many decimals as the
    longest of the column (trailing zeros added: the same values), so the decimal points line
    up."""
    split = [a.partition(".") for a in amounts]
    scale = max((len(fraction) for _, _, fraction in split), default=0)
    return [f"{whole}.{fraction.ljust(scale, '0')}" if scale else whole
            for whole, _, fraction in split]  # fmt: skip


def text(element: WebElement) -> str:
    """An element's text, also where a scrolled box hides it (its whitespace collapsed)."""
    return " ".join((element.get_attribute("textContent") or "").split())


def shot(browser: WebDriver, screenshots: Path, name: str) -> None:
    """A screenshot of the page as it is now, into the tests' output (UI_SCREENSHOTS)."""
    assert browser.save_screenshot(str(screenshots / f"{name}.png"))


async def spend(site: Site, **params: Any) -> dict[str, Any]:
    """GET /v1/spend as ui-a's key, which must answer 200."""
    async with site.client() as client:
        response = await client.get("/v1/spend", params=params, headers=bearer(site.keys["a"]))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
