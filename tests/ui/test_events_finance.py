"""The events pages as a finance person reads them: times on the project's clock (the clock of
the filter and of the overview's days and months) with their offset, the exact UTC instant
kept in each `<time>`; the events of a filter downloaded as CSV, FOCUS or JSON lines through
the session (the export of `GET /v1/usage/export`, for the session's own project only and with
the scope `read`), with a clear reason when the filter is no export window; and an unpriced
event's page that says what can be done about it.

Project ui-evt is on the clock of America/New_York: its event "fin-edge" lies two hours before
the start of last month there, so that it is the first day of last month in UTC but the last
day of the month before on the project's clock.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from redis.asyncio import Redis
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from aiserver.api.ui.sessions import Sessions, Signer
from aiserver.ledger.keys import parse_key
from aiserver.ledger.text import spreadsheet_safe

from ..conftest import TEST_REDIS_URL
from .conftest import SESSION_SECRET, Site, admin, bearer, shot, sign_in, text, through
from .test_security import SESSION, cookie_of, http_sign_in

pytestmark = pytest.mark.slow

NEW_YORK: Final = ZoneInfo("America/New_York")
SLUG: Final = "ui-evt"


def month_start(at: datetime, back: int) -> datetime:
    """Midnight of the first day of the month `back` months before `at`'s, on `at`'s clock."""
    index = at.year * 12 + at.month - 1 - back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=at.tzinfo)


async def _ok(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.fixture(scope="module")
async def fin(site: Site) -> dict[str, Any]:
    """ui-evt, its keys and events; the window of last month on its clock, as typed in the
    filter (dates) and as the API takes it (UTC)."""
    now = datetime.now(NEW_YORK)
    last, this = month_start(now, 1), month_start(now, 0)
    async with site.client() as client:
        await _ok(await client.post("/v1/projects", json={
            "slug": SLUG, "name": "Finance Review", "time_zone": "America/New_York",
        }, headers=admin()))  # fmt: skip
        for name, scopes in (("fin", ["ingest", "read", "admin"]), ("fin-ingest", ["ingest"])):
            made = await _ok(await client.post(f"/v1/projects/{SLUG}/keys",
                                               json={"name": name, "scopes": scopes},
                                               headers=admin()))  # fmt: skip
            site.keys[name], site.key_ids[name] = made["key"], made["id"]
        events = [
            {"id": "fin-edge", "model": "gpt-test-001", "tags": {"team": "finance"},
             "usage": {"input_tokens": 1000, "output_tokens": 100},
             "occurred_at": (last - timedelta(hours=2)).isoformat()},
            {"id": "fin-in", "model": "gpt-test-002", "tags": {"team": "finance"},
             "usage": {"input_tokens": 2000, "output_tokens": 200},
             "occurred_at": (last + timedelta(days=1, hours=9, minutes=30)).isoformat()},
            {"id": "fin-other-team", "model": "gpt-test-002", "tags": {"team": "ops"},
             "usage": {"input_tokens": 3000, "output_tokens": 300},
             "occurred_at": (last + timedelta(days=2)).isoformat()},
            {"id": "fin-unpriced", "model": "mystery-model-9000", "tags": {"team": "finance"},
             "usage": {"input_tokens": 500, "output_tokens": 50},
             "occurred_at": (last + timedelta(days=3)).isoformat()},
            # images, which the test catalog has no price for: partially priced
            {"id": "fin-partial", "model": "gpt-test-003", "tags": {"team": "ops"},
             "usage": {"input_tokens": 500, "output_tokens": 50, "images": 2},
             "occurred_at": (last + timedelta(days=4)).isoformat()},
        ]  # fmt: skip
        recorded = await _ok(await client.post("/v1/usage", json={"events": events},
                                               headers=bearer(site.keys["fin"])))  # fmt: skip
    ids = {r["id"]: r["event_id"] for r in recorded["results"]}
    return {
        "ids": ids,
        "from": last.date().isoformat(), "to": this.date().isoformat(),
        "utc": {"from": last.isoformat(), "to": this.isoformat()},
    }  # fmt: skip


async def api_event(site: Site, event_id: int) -> dict[str, Any]:
    async with site.client() as client:
        found = await client.get(f"/v1/usage/events/{event_id}", headers=bearer(site.keys["fin"]))
    body: dict[str, Any] = await _ok(found)
    return body


def on_new_york_clock(utc_text: str) -> str:
    """The API's UTC time as the pages show it: on ui-evt's clock, with its offset."""
    return datetime.fromisoformat(utc_text).astimezone(NEW_YORK).isoformat()


def shown_time(browser: WebDriver, css: str) -> tuple[str, str | None, str | None]:
    """A `<time>`'s text, its `datetime` and its title."""
    found = browser.find_element(By.CSS_SELECTOR, css)
    return text(found), found.get_attribute("datetime"), found.get_attribute("title")


async def test_event_times_are_on_the_projects_clock_with_their_offset_and_their_utc_instant(
    browser: WebDriver, site: Site, fin: dict[str, Any]
) -> None:
    edge = await api_event(site, fin["ids"]["fin-edge"])
    sign_in(browser, site, site.keys["fin"])
    browser.get(f"{site.url}/ui/p/{SLUG}/events/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    by_id = {text(r.find_element(By.CSS_SELECTOR, "th")): r for r in rows}
    assert len(by_id) == 5
    row = by_id[str(edge["event_id"])]
    cell = row.find_element(By.CSS_SELECTOR, "td.when time")
    local = on_new_york_clock(edge["occurred_at"])
    assert text(cell) == local
    assert cell.get_attribute("datetime") == edge["occurred_at"]  # the exact instant, in UTC
    assert edge["occurred_at"] in (cell.get_attribute("title") or "")
    # the month it counts in on the overview and in the filter: the month before last, on
    # the project's clock, where UTC says last month
    assert local[:7] < fin["from"][:7] == edge["occurred_at"][:7]
    assert local.endswith(("-05:00", "-04:00"))
    # so the filter of last month (on the project's clock) does not list it, and lists the
    # others with times inside the window as shown
    browser.get(f"{site.url}/ui/p/{SLUG}/events/?from={fin['from']}&to={fin['to']}")
    shown = [text(c) for c in browser.find_elements(By.CSS_SELECTOR, "#events td.when")]
    assert len(shown) == 4
    assert all(fin["from"] <= when[:10] < fin["to"] for when in shown), shown

    browser.get(f"{site.url}/ui/p/{SLUG}/events/{edge['event_id']}")
    for css, field in (("#event-occurred time", "occurred_at"),
                       ("#event-received time", "received_at")):  # fmt: skip
        said, exact, title = shown_time(browser, css)
        assert said == on_new_york_clock(edge[field]), css
        assert exact == edge[field], css
        assert edge[field] in (title or ""), css


def download(browser: WebDriver, downloads: Path, link: str, suffix: str) -> Path:
    """Click the download link whose text is `link`: the file the browser saved."""
    for old in downloads.glob("*"):
        old.unlink()
    browser.find_element(By.LINK_TEXT, link).click()
    deadline = time.monotonic() + 30  # a bounded wait for the browser's download
    while not (found := list(downloads.glob(f"*{suffix}"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(found) == 1, list(downloads.iterdir())
    return found[0]


async def api_export(site: Site, params: dict[str, str]) -> httpx.Response:
    async with site.client() as client:
        answer = await client.get("/v1/usage/export", params=params,
                                  headers=bearer(site.keys["fin"]))  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer


async def test_the_filters_events_download_as_the_api_exports_them(
    browser: WebDriver, site: Site, fin: dict[str, Any], downloads: Path, screenshots: Path
) -> None:
    sign_in(browser, site, site.keys["fin"])
    browser.get(f"{site.url}/ui/p/{SLUG}/events/")
    assert browser.find_elements(By.ID, "downloads-need-window")
    assert not browser.find_elements(By.CSS_SELECTOR, "#downloads a")
    for name, value in (("e-from", fin["from"]), ("e-to", fin["to"]), ("e-tag-1", "team=finance")):
        browser.find_element(By.ID, name).send_keys(value)
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.query button[type=submit]"))
    shot(browser, screenshots, "events-downloads")
    # the page says what the export does to a cell that would start a formula (it used to say
    # such a cell was written as sent)
    said = browser.find_element(By.CSS_SELECTOR, "#downloads .help").text
    assert f"=cmd is written {spreadsheet_safe('=cmd')}" in said, said
    links = browser.find_elements(By.CSS_SELECTOR, "#downloads a.download")
    assert len(links) == 3
    # the FOCUS link says what its file leaves out (fin-unpriced), the other two nothing
    notes = [text(li) for li in browser.find_elements(By.CSS_SELECTOR, "#downloads li")]
    assert [note.split(") ", 1)[1] if ") " in note else "" for note in notes] == [
        "", "without the 1 unpriced event of this filter: no cost yet, so no FOCUS row "
        "(the CSV lists it)", "",
    ]  # fmt: skip
    for link in links:  # the filter of the page, not its cursor
        query = parse_qs(urlsplit(link.get_attribute("href") or "").query)
        assert {k: v for k, v in query.items() if k != "format"} == {
            "from": [fin["from"]], "to": [fin["to"]], "tag": ["team=finance"]
        }  # fmt: skip
    window = f"{fin['from']}-{fin['to']}"
    api = {**fin["utc"], "tag:team": "finance"}
    here = browser.current_url
    priced = {"from": fin["from"], "to": fin["to"], "tag": "team=finance", "status": "priced"}
    browser.get(f"{site.url}/ui/p/{SLUG}/events/?{urlencode(priced)}")  # no unpriced: no note
    assert len(browser.find_elements(By.CSS_SELECTOR, "#downloads a.download")) == 3
    assert not browser.find_elements(By.CSS_SELECTOR, "#downloads .left-out")
    browser.get(here)

    saved = download(browser, downloads, "CSV, one row per event", ".csv")
    assert saved.name == f"events-{SLUG}-{window}.csv"
    expected = await api_export(site, {**api, "format": "csv"})
    assert saved.read_bytes() == expected.content
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert [r["id"] for r in rows] == ["fin-in", "fin-unpriced"]  # not fin-edge, nor ops

    saved = download(browser, downloads, "FinOps FOCUS 1.2 CSV, one row per priced component",
                     "-focus.csv")  # fmt: skip
    assert saved.name == f"events-{SLUG}-{window}-focus.csv"
    focus = await api_export(site, {**api, "format": "focus"})
    assert saved.read_bytes() == focus.content
    assert {r["x_EventKey"] for r in csv.DictReader(io.StringIO(saved.read_text()))} == {"fin-in"}

    saved = download(browser, downloads, "JSON lines, one event a line", ".jsonl")
    assert saved.name == f"events-{SLUG}-{window}.jsonl"
    assert saved.read_bytes() == (await api_export(site, {**api, "format": "jsonl"})).content
    assert [json.loads(line)["id"] for line in saved.read_text().splitlines()] == [
        "fin-in", "fin-unpriced"
    ]  # fmt: skip

    # over HTTP: the headers the API sends, the FOCUS export's count of unpriced events too
    async with site.client() as client:
        cookie = cookie_of(await http_sign_in(client, site.keys["fin"]))
        params = {"format": "focus", "from": fin["from"], "to": fin["to"], "tag": "team=finance"}
        got = await client.get(f"/ui/p/{SLUG}/events/export", params=params,
                               headers={"cookie": f"{SESSION}={cookie}"})  # fmt: skip
    assert got.status_code == 200, got.text
    assert got.headers["x-unpriced-events"] == focus.headers["x-unpriced-events"] == "1"
    assert got.headers["content-type"] == focus.headers["content-type"]
    assert got.headers["content-disposition"] == (
        f'attachment; filename="events-{SLUG}-{window}-focus.csv"'
    )
    assert "no-store" in got.headers["cache-control"]


async def test_a_filter_that_is_no_export_window_says_why(
    browser: WebDriver, site: Site, fin: dict[str, Any]
) -> None:
    sign_in(browser, site, site.keys["fin"])
    base = f"{site.url}/ui/p/{SLUG}/events/export"
    for query, said in (
        ("", "a download covers a window [From, To): give from and to"),
        (f"from={fin['from']}", "a download covers a window [From, To): give to"),
        (f"from={fin['to']}&to={fin['from']}", "must be after from"),
        (f"from={fin['from']}&to={fin['to']}&format=xlsx", "format: 'xlsx' is not one of"),
    ):
        browser.get(f"{base}?{query}")
        shown = browser.find_elements(By.CSS_SELECTOR, "main [role=alert]")
        assert shown, (query, browser.page_source[:500])
        assert said in text(shown[0]), query
        assert browser.find_elements(By.ID, "events"), query  # the events page, to correct it
    async with site.client() as client:
        cookie = cookie_of(await http_sign_in(client, site.keys["fin"]))
        refused = await client.get(base.removeprefix(site.url), params={"from": fin["from"]},
                                   headers={"cookie": f"{SESSION}={cookie}"})  # fmt: skip
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("text/html")


async def test_a_session_downloads_its_own_projects_events_only(
    site: Site, fin: dict[str, Any]
) -> None:
    window = {"from": "2020-01-01", "to": "2030-01-01"}
    async with site.client() as client:
        b = {"cookie": f"{SESSION}={cookie_of(await http_sign_in(client, site.keys['b']))}"}
        for fmt in ("csv", "focus", "jsonl"):
            theirs = await client.get(f"/ui/p/{SLUG}/events/export", headers=b,
                                      params={**window, "format": fmt})  # fmt: skip
            assert theirs.status_code == 404, theirs.text
            assert "fin-" not in theirs.text
            assert "Finance Review" not in theirs.text
            # exactly as for a project that does not exist
            nowhere = await client.get("/ui/p/no-such-fin/events/export", headers=b,
                                       params={**window, "format": fmt})  # fmt: skip
            assert nowhere.status_code == 404
            assert nowhere.text.replace("no-such-fin", SLUG) == theirs.text
        # B's own: its event only
        own = await client.get("/ui/p/ui-b/events/export", headers=b, params=window)
        assert own.status_code == 200, own.text
        assert [r["id"] for r in csv.DictReader(io.StringIO(own.text))] == ["b-1"]
        # the operator reaches every project
        operator = admin()["Authorization"].removeprefix("Bearer ")
        o = {"cookie": f"{SESSION}={cookie_of(await http_sign_in(client, operator))}"}
        every = await client.get(f"/ui/p/{SLUG}/events/export", headers=o, params=window)
    assert every.status_code == 200, every.text
    assert sorted(r["id"] for r in csv.DictReader(io.StringIO(every.text))) == sorted(fin["ids"])


async def test_a_session_of_a_key_without_read_downloads_nothing(
    site: Site, fin: dict[str, Any]
) -> None:
    """No such session is made by the sign-in (it refuses the key); one made by hand in Redis,
    as a key whose scopes were narrowed after it signed in would hold, is refused by the
    download itself, as `GET /v1/usage/export` refuses the key."""
    presented = parse_key(site.keys["fin-ingest"])
    assert presented is not None
    redis = Redis.from_url(TEST_REDIS_URL)
    try:
        sessions = Sessions(redis, Signer(SESSION_SECRET.encode()), 600)
        cookie, _ = await sessions.start(
            "key", public_id=presented.public_id, key_id=site.key_ids["fin-ingest"]
        )
        async with site.client() as client:
            sent = {"cookie": f"{SESSION}={cookie}"}
            refused = await client.get(f"/ui/p/{SLUG}/events/export", headers=sent,
                                       params={"from": fin["from"], "to": fin["to"]})  # fmt: skip
            api = await client.get("/v1/usage/export", headers=bearer(site.keys["fin-ingest"]),
                                   params=fin["utc"])  # fmt: skip
    finally:
        await redis.aclose()
    assert (api.status_code, refused.status_code) == (403, 403), refused.text
    assert "the scope &#39;read&#39;" in refused.text  # escaped in the page
    assert "fin-in" not in refused.text


async def test_an_unpriced_events_page_says_what_can_be_done(
    browser: WebDriver, site: Site, fin: dict[str, Any], screenshots: Path
) -> None:
    sign_in(browser, site, site.keys["fin"])
    browser.get(f"{site.url}/ui/p/{SLUG}/events/{fin['ids']['fin-unpriced']}")
    shot(browser, screenshots, "event-unpriced")
    step = text(browser.find_element(By.ID, "event-next-step"))
    for said in ("counts as 0", "an operator", "adds a price for the model mystery-model-9000",
                 "price override", "reprice", "repriced automatically", "scope admin",
                 "docs/repricing.md"):  # fmt: skip
        assert said in step, said
    adjustments = text(browser.find_element(By.ID, "event-adjustments"))
    assert adjustments.startswith("None yet: no reprice has changed this event")
    assert "priced as it was recorded" not in adjustments

    # partially priced: its cost leaves out what has no price. This call is of last month,
    # before the test catalog's first price of its model: no override can reach it (one may not
    # begin before that price), so none is advised (test_before_catalog.py: a later call's page
    # advises one, back-dated)
    browser.get(f"{site.url}/ui/p/{SLUG}/events/{fin['ids']['fin-partial']}")
    assert text(browser.find_element(By.ID, "event-status")) == "partially priced"
    assert "is before the catalog's first price" in text(browser.find_element(By.ID, "event-note"))
    step = text(browser.find_element(By.ID, "event-next-step"))
    for said in (
        "no price (images)",
        "its cost leaves it out",
        "no price override can reach it",
    ):
        assert said in step, said
    assert "back-dated" not in step, step

    browser.get(f"{site.url}/ui/p/{SLUG}/events/{fin['ids']['fin-in']}")
    assert not browser.find_elements(By.ID, "event-next-step")  # priced: nothing to do
    adjustments = text(browser.find_element(By.ID, "event-adjustments"))
    assert adjustments == "None: the event is priced as it was recorded."


def test_a_whole_month_is_one_click_away_with_the_other_filters_kept(
    browser: WebDriver, site: Site, fin: dict[str, Any]
) -> None:
    """The From and To placeholders read like values, and a month had to be typed to get its
    downloads: the page offers this month and last month on the project's clock."""
    sign_in(browser, site, site.keys["fin"])
    browser.get(f"{site.url}/ui/p/{SLUG}/events/?tag=team%3Dfinance")
    assert browser.find_element(By.ID, "e-from").get_attribute("placeholder") == "YYYY-MM-DD"
    today = datetime.now(ZoneInfo("America/New_York")).date()
    first = today.replace(day=1)
    last_month = (first - timedelta(days=1)).replace(day=1)
    said = f"Last month ({last_month:%B %Y})"
    through(browser, browser.find_element(By.LINK_TEXT, said))
    query = parse_qs(urlsplit(browser.current_url).query)
    assert query == {
        "from": [last_month.isoformat()], "to": [first.isoformat()], "tag": ["team=finance"]
    }  # fmt: skip
    assert browser.find_element(By.ID, "e-from").get_attribute("value") == last_month.isoformat()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#downloads a.download")) == 3
    assert browser.find_element(By.LINK_TEXT, f"This month ({first:%B %Y})")
    # the page says which tags have a column in the CSV: ui-evt rolls up none
    assert browser.find_element(By.ID, "csv-tags").text == (
        "The CSV keeps an event's tags in one cell, as JSON: this project rolls up no tag (a "
        "tag it rolled up would have a column of its own)."
    )
    explore = browser.find_element(By.ID, "explore-by-tag").get_attribute("href") or ""
    assert parse_qs(urlsplit(explore).query) == {
        "from": [last_month.isoformat()], "to": [first.isoformat()], "bucket": ["day"]
    }  # fmt: skip
    # ui-a rolls up team: its CSV has a tag:team column, and the page says so
    sign_in(browser, site, site.keys["a"])
    browser.get(f"{site.url}/ui/p/ui-a/events/?from={last_month}&to={first}")
    assert browser.find_element(By.ID, "csv-tags").text == (
        "The CSV has a column for each tag the project rolls up (tag:team), to filter and total "
        "by in a spreadsheet, and keeps all of an event's tags in one cell, as JSON."
    )


async def test_the_operator_s_projects_list_shows_an_all_unpriced_month_as_unpriced(
    site: Site,
) -> None:
    """A project whose month so far holds unpriced calls only read `0 *` in the operator's list
    (a finance reviewer's walk), while its own overview said `unpriced`."""
    slug = "zeta-unpriced"  # listed after the site's projects (by name)
    async with site.client() as client:
        await _ok(await client.post("/v1/projects", json={"slug": slug, "name": "Zeta Unpriced"},
                                    headers=admin()))  # fmt: skip
        made = await _ok(await client.post(f"/v1/projects/{slug}/keys",
                                           json={"name": "k", "scopes": ["ingest"]},
                                           headers=admin()))  # fmt: skip
        await _ok(await client.post("/v1/usage", headers=bearer(made["key"]), json={
            "id": "u-1", "model": "mystery-model-9000", "usage": {"input_tokens": 5}}))  # fmt: skip
        operator = admin()["Authorization"].removeprefix("Bearer ")
        o = {"cookie": f"{SESSION}={cookie_of(await http_sign_in(client, operator))}"}
        page = await client.get("/ui/", headers=o)
    assert page.status_code == 200, page.text
    row = page.text.split(f"<td>{slug}</td>", 1)[1].split("</tr>", 1)[0]
    # this month, last month, as read (the marks and blanks that align them are empty)
    cells = [re.sub(r"<[^>]*>", "", c.split(">", 1)[1]) for c in row.split("</td>")[1:3]]
    assert cells == ["unpriced", "0"], row
