"""Names, tags and models may hold Unicode's bidirectional formatting characters (right-to-left
text can need them), and a page shows them inside sentences and beside other values. A value
that opens a right-to-left override and leaves it open (`‮` U+202E) would draw the rest of
its line backwards: "Deleting the budget X (limit 10 USD)" could be made to read otherwise.
Every value a page writes has its runs closed at its end; a form's field keeps the value exactly
as stored, so that it is sent back unchanged.

What is checked is what the browser draws: on every page, each Latin letter outside the test's
own values stands to the right of the letter before it on the same line of the same block. On
the code before the fix, the budget's, the key's and the project's names turned the text after
them around."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from aiserver.ledger.text import bidi_closed

from ..reliability.harness import ADMIN_TOKEN
from .conftest import Site, admin, bearer, sign_in, through

pytestmark = pytest.mark.slow

RLO, RLI, PDF, PDI, PS = "\u202e", "\u2067", "\u202c", "\u2069", "\u2029"
#: Every value of the test holds "Zq": the letters of the words holding it are its own, which
#: its override may draw backwards; every other letter on the page must read left to right.
PROJECT: Final = f"Bidi {RLO}Zqproject"
#: A paragraph separator (U+2029), which Chromium draws as one: the PDI matches nothing past it
#: and leaves the override open (read as one paragraph, it would close it)
KEY: Final = f"{RLI}Zq{PS}{RLO}Zqkey{PDI}"
BUDGET: Final = f"{RLI}Zqbudget{RLO}"  # an isolate and an override, both left open
TEAM: Final = f"{RLO}Zqteam"
MODEL: Final = f"{RLO}Zqmodel"  # not in the catalog: unpriced
SLUG: Final = "ui-bidi"

#: The Latin letters of each text node, outside the words holding "Zq", with where the browser
#: drew them; each compared with the one before it in the same block (the nearest ancestor
#: that is not inline) when both lie on the same line.
BACKWARDS: Final = """
const blockOf = (node) => {
  let el = node.parentElement;
  while (el && getComputedStyle(el).display === "inline") el = el.parentElement;
  return el;
};
const found = [];
const range = document.createRange();
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
let before = null;
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  const block = blockOf(node);
  for (const word of node.data.matchAll(/[A-Za-z]+/g)) {
    if (word[0].includes("Zq")) continue;
    for (let i = word.index; i < word.index + word[0].length; i++) {
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const box = range.getBoundingClientRect();
      if (box.width === 0) continue;  // not drawn
      const letter = {block, box, text: node.data, char: node.data[i]};
      if (before && before.block === block && Math.abs(before.box.top - box.top) < 2
          && box.left < before.box.left) {
        found.push(`${letter.char} drawn left of ${before.char}: ${JSON.stringify(letter.text)}`);
      }
      before = letter;
    }
  }
}
return found;
"""


async def _made(site: Site) -> dict[str, Any]:
    """The project, its key, usage tagged and modelled with the values, and a budget over the
    tag: what each page shows."""
    now = datetime.now(UTC) - timedelta(minutes=5)
    async with site.client() as client:

        async def post(path: str, body: Any, headers: dict[str, str]) -> Any:
            response = await client.post(path, json=body, headers=headers)
            assert response.status_code in (200, 201), response.text
            return response.json()

        await post("/v1/projects", {"slug": SLUG, "name": PROJECT, "rollup_tags": ["team"]},
                   admin())  # fmt: skip
        key = await post(f"/v1/projects/{SLUG}/keys",
                         {"name": KEY, "scopes": ["ingest", "read", "admin"]}, admin())  # fmt: skip
        events = [
            {"id": f"bidi-{i}", "model": model, "tags": {"team": TEAM},
             "occurred_at": (now - timedelta(hours=i)).isoformat(),
             "usage": {"input_tokens": 100 + i, "output_tokens": 10}}
            for i, model in enumerate(["gpt-test-001", MODEL, "gpt-test-002"])
        ]  # fmt: skip
        recorded = await post("/v1/usage", {"events": events}, bearer(key["key"]))
        budget = await post("/v1/budgets", {
            "name": BUDGET, "limit_usd": "0.0001", "period": "month", "tags": {"team": TEAM},
        }, bearer(key["key"]))  # fmt: skip
    return {
        "key": key["key"],
        "key_id": key["id"],
        "event_id": recorded["results"][1]["event_id"],
        "budget_id": budget["id"],
        "since": (now - timedelta(days=2)).date().isoformat(),
        "until": (now + timedelta(days=2)).date().isoformat(),
    }


@pytest.fixture(scope="module")
async def made(site: Site) -> dict[str, Any]:
    return await _made(site)


def _backwards(browser: WebDriver, path: str) -> list[str]:
    found: list[str] = browser.execute_script(BACKWARDS)
    return [f"{path}: {line}" for line in found]


def test_no_value_turns_the_text_after_it_around(
    browser: WebDriver, site: Site, made: dict[str, Any]
) -> None:
    base = f"/ui/p/{SLUG}"
    explore = urlencode([("from", made["since"]), ("to", made["until"]), ("bucket", "day"),
                         ("group_by", "model"), ("group_by", "tag:team")])  # fmt: skip
    paths = [
        f"{base}/",
        f"{base}/explore?{explore}",
        f"{base}/events/",
        f"{base}/events/{made['event_id']}",
        f"{base}/budgets",
        f"{base}/budgets/{made['budget_id']}",
        f"{base}/budgets/{made['budget_id']}/delete",
        f"{base}/keys",
        f"{base}/keys/{made['key_id']}/revoke",
    ]
    sign_in(browser, site, made["key"])
    found: list[str] = []
    for path in paths:
        browser.get(site.url + path)
        assert browser.find_elements(By.TAG_NAME, "h1"), (path, browser.page_source[:500])
        assert "Zqproject" in browser.page_source, path  # the project's name is on every page
        found += _backwards(browser, path)
    # the operator's list of projects, and a project's page seen by the operator
    browser.delete_all_cookies()
    sign_in(browser, site, ADMIN_TOKEN)
    for path in ("/ui/", f"{base}/budgets/{made['budget_id']}/delete"):
        browser.get(site.url + path)
        assert "Zqproject" in browser.page_source, path
        found += _backwards(browser, path)
    assert found == [], "\n".join(found)


def test_a_field_keeps_the_value_as_stored(
    browser: WebDriver, site: Site, made: dict[str, Any]
) -> None:
    """A field is drawn in a box of its own: its value is sent back as it was stored, so a
    budget saved unchanged keeps its name, and a tag filter finds the tag."""
    sign_in(browser, site, made["key"])
    browser.get(f"{site.url}/ui/p/{SLUG}/budgets/{made['budget_id']}")
    field = browser.find_element(By.ID, "c-name")
    assert field.get_attribute("value") == BUDGET
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.query button[type=submit]"))
    assert not browser.find_elements(By.ID, "budget-error"), browser.page_source
    assert browser.find_element(By.ID, "c-name").get_attribute("value") == BUDGET

    tag = f"team={TEAM}"
    browser.get(f"{site.url}/ui/p/{SLUG}/events/?{urlencode({'tag': tag})}")
    assert browser.find_element(By.ID, "e-tag-1").get_attribute("value") == tag
    rows = browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    assert len(rows) == 3, browser.page_source
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.query button[type=submit]"))
    assert browser.find_element(By.ID, "e-tag-1").get_attribute("value") == tag
    assert len(browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")) == 3


def test_a_chart_s_labels_are_closed(browser: WebDriver, site: Site, made: dict[str, Any]) -> None:
    """A chart draws a label on a canvas, and its tooltip writes `label: 0.12 USD` in one
    string: a label left open would draw the amount backwards (21.0 for 0.12). Every label of
    the charts' data is closed: closing it again adds nothing."""
    explore = urlencode([("from", made["since"]), ("to", made["until"]), ("bucket", "day")])
    sign_in(browser, site, made["key"])
    seen = []
    for path, chart in ((f"/ui/p/{SLUG}/", "daily"),  # by model
                        (f"/ui/p/{SLUG}/explore?{explore}&group_by=tag:team", "explore"),
                        (f"/ui/p/{SLUG}/explore?{explore}&group_by=model&group_by=tag:team",
                         "explore")):  # fmt: skip
        browser.get(site.url + path)
        data = json.loads(
            browser.find_element(By.ID, f"{chart}-data").get_attribute("textContent") or ""
        )
        labels = [series["label"] for series in data["series"]]
        assert any("Zq" in label for label in labels), (path, labels)
        assert [bidi_closed(label) for label in labels] == labels, path
        seen += labels
    assert f"{RLO}Zqmodel{PDF}" in seen  # one dimension: the value, closed
    assert f"{RLO}Zqteam{PDF}" in seen
