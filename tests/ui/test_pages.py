"""The dashboard's pages in a real browser show exactly what the API answers for the same
questions: the overview's months, days, models, tags and budgets; Explore's table and its CSV;
the events, their pages, and one event's components and prices, and the adjustments that
reprices made to an event."""

from __future__ import annotations

import colorsys
import csv
import io
import itertools
import math
import random
import re
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from aiserver.api.ui.explore import MAX_SHOWN_CELLS, MAX_SHOWN_ROWS
from aiserver.ledger.repricing.execution import Outcome

from ..support.reprice import execute_as_the_job
from .conftest import (
    Site,
    admin,
    at_scale,
    bearer,
    budget_table,
    committed,
    header,
    project_with_key,
    shot,
    sign_in,
    spend,
    table,
    text,
    through,
)

pytestmark = pytest.mark.slow

BERLIN = ZoneInfo("Europe/Berlin")  # ui-a's time zone


def priced(group: dict[str, Any], cost: str) -> str:
    """A group's cost as a table shows it: `unpriced` where every event it counts is."""
    return "unpriced" if 0 < group["events"] == group["unpriced_events"] else cost


def month(day: date, back: int) -> date:
    index = day.year * 12 + day.month - 1 - back
    return date(index // 12, index % 12 + 1, 1)


def label(group: dict[str, Any], name: str) -> str:
    if group["other"]:
        return "(other)"
    value = group["key"][name]
    return "(none)" if value is None else str(value)


async def test_the_overview_shows_the_numbers_of_get_v1_spend_and_the_budgets(
    browser: WebDriver, site: Site, screenshots: Path
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    assert browser.current_url == f"{site.url}/ui/p/ui-a/"
    shot(browser, screenshots, "overview")
    today = datetime.now(BERLIN).date()
    for index, back in ((1, 0), (2, 1)):
        answer = await spend(site, **{"from": month(today, back).isoformat(),
                                      "to": month(today, back - 1).isoformat()})  # fmt: skip
        # the exact amount, beside the headline rounded to the cent
        shown = browser.find_element(By.CSS_SELECTOR, f"#period-{index} .exact").text
        assert shown.endswith(f"exactly {answer['total']['cost']} USD")

    since, until = (today - timedelta(days=29)).isoformat(), (today + timedelta(days=1)).isoformat()
    daily = await spend(site, **{"from": since, "to": until, "bucket": "day",
                                 "group_by": "model", "top": "8"})  # fmt: skip
    columns = [label(g, "model") for g in daily["groups"]]
    assert len(columns) == 9
    assert columns[-1] == "(other)"
    assert header(browser, "daily-table") == ["day", *columns, "total"]
    expected = []
    for bucket in daily["buckets"]:
        cost = {label(g, "model"): g["cost"] for g in bucket["groups"]}
        # today: its spend is not over
        so_far = " (so far)" if bucket["start"][:10] == today.isoformat() else ""
        expected.append([bucket["start"][:10] + so_far, *(cost.get(c, "0") for c in columns),
                         bucket["total"]["cost"]])  # fmt: skip
    # each column's amounts at the column's scale
    shown_columns = [at_scale([row[i] for row in expected]) for i in range(1, len(columns) + 2)]
    expected = [[row[0], *(c[n] for c in shown_columns)] for n, row in enumerate(expected)]
    assert table(browser, "daily-table") == expected
    assert len(expected) == 30

    # costs at their column's scale (with the total's), counts grouped by thousands
    costs = at_scale([g["cost"] for g in daily["groups"]] + [daily["total"]["cost"]])
    assert table(browser, "top-models") == [
        [label(g, "model"), priced(g, cost), f"{g['events']:,}", f"{g['unpriced_events']:,}",
         f"{g['partially_priced_events']:,}", f"{g['input_tokens']:,}", f"{g['output_tokens']:,}"]
        for g, cost in zip(daily["groups"], costs, strict=False)
    ]  # fmt: skip
    teams = await spend(site, **{"from": since, "to": until, "group_by": "tag:team", "top": "5"})
    costs = at_scale([g["cost"] for g in teams["groups"]])
    assert table(browser, "tag-team") == [
        [label(g, "tag:team"), priced(g, cost), f"{g['events']:,}", f"{g['unpriced_events']:,}"]
        for g, cost in zip(teams["groups"], costs, strict=True)
    ]
    assert {row[0] for row in table(browser, "tag-team")} == {"search", "ads", "infra"}

    async with site.client() as client:
        budgets = (await client.get("/v1/budgets", headers=bearer(site.keys["a"]))).json()
    (budget,) = budgets["budgets"]
    window = budget["window"]
    (row,) = budget_table(browser, "budgets")
    assert row[0] == "Monthly cap"
    assert row[3:] == [budget["limit_usd"], committed(window), window["reserved"],
                       window["remaining"], f"{window['used_percent']}%"]  # fmt: skip

    links = browser.find_elements(By.CSS_SELECTOR, "#unpriced a")
    assert [a.get_attribute("href") for a in links] == [
        f"{site.url}/ui/p/ui-a/events/{site.event_ids['a-unpriced']}"
    ]
    through(browser, links[0])
    assert browser.find_element(By.ID, "event-status").text == "unpriced"
    assert "mystery-model-9000" in browser.find_element(By.ID, "event-note").text


async def test_the_chart_is_drawn_and_its_table_alternative_holds_its_figures(
    browser: WebDriver, site: Site
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    canvas = browser.find_element(By.ID, "daily")
    assert canvas.get_attribute("role") == "img"
    assert "table below" in (canvas.get_attribute("aria-label") or "")
    drawn = browser.execute_script(
        "const c = Chart.getChart('daily'); return c ? "
        "c.data.datasets.map(d => [d.label, d.exact]) : null;"
    )
    columns = header(browser, "daily-table")[1:-1]
    rows = table(browser, "daily-table")
    assert drawn == [[c, [row[1 + i] for row in rows]] for i, c in enumerate(columns)]


async def test_explore_answers_a_filtered_question_as_get_v1_spend_and_downloads_that_table(
    browser: WebDriver, site: Site, downloads: Path, screenshots: Path
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    through(browser, browser.find_element(By.LINK_TEXT, "Explore"))
    today = datetime.now(BERLIN).date()
    since, until = (today - timedelta(days=13)).isoformat(), (today + timedelta(days=1)).isoformat()
    for field, value in (("q-from", since), ("q-to", until)):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    Select(browser.find_element(By.ID, "q-bucket")).select_by_value("week")
    browser.find_element(By.CSS_SELECTOR, "input[name=group_by][value='tag:team']").click()
    browser.find_element(By.ID, "q-tag-1").send_keys("feature=f1")
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.query button[type=submit]"))
    query = parse_qs(urlsplit(browser.current_url).query)
    assert query == {"from": [since], "to": [until], "bucket": ["week"], "tz": ["Europe/Berlin"],
                     "group_by": ["model", "tag:team"], "tag": ["feature=f1"]}  # fmt: skip
    shot(browser, screenshots, "explore")

    answer = await spend(site, **{
        "from": since, "to": until, "bucket": "week", "tz": "Europe/Berlin",
        "group_by": "model,tag:team", "tag:feature": "f1",
    })  # fmt: skip
    assert browser.find_element(By.ID, "answer-total").text == answer["total"]["cost"]
    counts = ["events", "unpriced_events", "partially_priced_events", "input_tokens",
              "output_tokens", "cache_read_tokens", "cache_write_tokens",
              "reasoning_tokens"]  # fmt: skip
    # the week that holds today is not over: its row says so (the window ends tomorrow)
    as_of = answer["freshness"]["as_of"]
    expected = [
        [b["start"], b["end"], "yes" if instant(b["end"]) <= instant(as_of) else "no",
         label(g, "model"), label(g, "tag:team"), csv_cost(g), "USD",
         *(str(g[c]) for c in counts)]
        for b in answer["buckets"] for g in b["groups"]
    ]  # fmt: skip
    assert expected
    assert expected[-1][2] == "no", expected[-1]
    # the page: the costs at their column's scale, the counts grouped by thousands
    costs = at_scale([row[5] for row in expected if row[5]])
    shown_costs, remaining = [], iter(costs)
    for row in expected:
        shown_costs.append(next(remaining) if row[5] else "unpriced")
    assert table(browser, "rows") == [
        [*row[:5], cost, row[6], *(f"{int(n):,}" for n in row[7:])]
        for row, cost in zip(expected, shown_costs, strict=True)
    ]
    columns = ["from", "to (not included)", "ended", "model", "tag:team", "cost",
               "currency", *counts]  # fmt: skip
    # in words on the page (unpriced events, ...), the API's names in the CSV
    assert header(browser, "rows") == [c.replace("_", " ") for c in columns]

    # the CSV: the same rows, every value exactly as the API writes it
    name, rows = download(browser, downloads, "csv")
    assert name == f"spend-ui-a-{since}-{until}.csv"
    assert rows == [columns, *expected]


def csv_cost(group: dict[str, Any]) -> str:
    """A group's cost as the table's CSV writes it: the API's, but none (empty) for a group of
    unpriced events only, whose 0 would read as free."""
    return "" if group["events"] and group["unpriced_events"] == group["events"] else group["cost"]


def download(browser: WebDriver, downloads: Path, link_id: str) -> tuple[str, list[list[str]]]:
    """Click the link that downloads a CSV: the file's name and its rows."""
    for old in downloads.glob("*"):
        old.unlink()
    browser.find_element(By.ID, link_id).click()
    deadline = time.monotonic() + 30  # a bounded wait for the browser's download, no assertion
    while not (found := list(downloads.glob("*.csv"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(found) == 1, list(downloads.iterdir())
    return found[0].name, list(csv.reader(io.StringIO(found[0].read_text())))


async def test_the_csv_download_is_the_table_shown_though_usage_came_since(
    browser: WebDriver, site: Site, downloads: Path
) -> None:
    """A finance person reads the table, then downloads it: the file holds what was read, not
    the question asked again with the usage recorded since. The second link asks again."""
    async with site.client() as client:
        made = await client.post("/v1/projects", headers=admin(),
                                 json={"slug": "ui-d", "name": "Delta Downloads"})  # fmt: skip
        assert made.status_code == 201, made.text
        key = await client.post("/v1/projects/ui-d/keys", headers=admin(),
                                json={"name": "d", "scopes": ["ingest", "read"]})  # fmt: skip
        assert key.status_code == 201, key.text
    d_key = key.json()["key"]
    day = datetime.now(UTC).date() - timedelta(days=2)
    since, until = day.isoformat(), (day + timedelta(days=1)).isoformat()

    async def record(key: str, model: str) -> None:
        event = {"id": key, "model": model, "usage": {"input_tokens": 1000},
                 "occurred_at": f"{since}T12:00:00Z"}  # fmt: skip
        async with site.client() as client:
            response = await client.post("/v1/usage", json={"events": [event]},
                                         headers=bearer(d_key))  # fmt: skip
        assert response.json()["recorded"] == 1, response.text

    await record("d-1", "gpt-test-001")
    sign_in(browser, site, d_key)
    browser.get(f"{site.url}/ui/p/ui-d/explore?from={since}&to={until}&tz=UTC&bucket=day"
                "&group_by=model")  # fmt: skip
    # the day was over when the page was read: ended
    assert header(browser, "rows")[:4] == ["from", "to (not included)", "ended", "model"]
    shown = table(browser, "rows")
    assert [row[2:4] for row in shown] == [["yes", "gpt-test-001"]]
    await record("d-2", "gpt-test-000")  # after the page was read

    name, rows = download(browser, downloads, "csv")
    assert name == f"spend-ui-d-{since}-{until}.csv"
    # the table shown, its counts without the page's grouping by thousands (one row: its cost
    # is at its own scale)
    assert rows[0][:4] == ["from", "to (not included)", "ended", "model"]
    assert rows[1:] == [[re.sub(r"^(\d{1,3}),(\d{3})$", r"\1\2", cell) for cell in row]
                        for row in shown]  # fmt: skip
    again_name, asked_again = download(browser, downloads, "csv-now")
    # named apart from the table's own download: with when it was counted
    assert re.fullmatch(rf"spend-ui-d-{since}-{until}-as-of-\d{{8}}T\d{{6}}Z\.csv", again_name)
    assert sorted(row[3] for row in asked_again[1:]) == ["gpt-test-000", "gpt-test-001"]


async def test_explore_says_what_is_wrong_with_a_question(browser: WebDriver, site: Site) -> None:
    sign_in(browser, site, site.keys["a-read"])
    browser.get(f"{site.url}/ui/p/ui-a/explore?from=2026-12-10&to=2026-12-01&bucket=day")
    assert "must be after from" in browser.find_element(By.ID, "query-error").text
    assert browser.find_element(By.ID, "q-from").get_attribute("value") == "2026-12-10"


async def test_events_filter_page_and_show_one_event_as_the_api_does(
    browser: WebDriver, site: Site, screenshots: Path
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    through(browser, browser.find_element(By.LINK_TEXT, "Events"))
    shot(browser, screenshots, "events")
    async with site.client() as client:
        listed = []
        params: dict[str, Any] = {"limit": 1000}
        body = (await client.get("/v1/usage/events", params=params,
                                 headers=bearer(site.keys["a"]))).json()  # fmt: skip
        listed = [e["event_id"] for e in body["data"]]
    assert len(listed) == 61
    seen: list[int] = []
    while True:
        seen += [int(row[0]) for row in table(browser, "events")]
        following = browser.find_elements(By.ID, "next-page")
        if not following:
            break
        through(browser, following[0])
    assert seen == listed  # every event once, newest first, over two pages

    Select(browser.find_element(By.ID, "e-status")).select_by_value("unpriced")
    through(browser, browser.find_element(By.CSS_SELECTOR, "form.query button[type=submit]"))
    assert [row[0] for row in table(browser, "events")] == [str(site.event_ids["a-unpriced"])]
    browser.get(f"{site.url}/ui/p/ui-a/events/?tag=team%3Dinfra&model=gpt-test-003")
    rows = table(browser, "events")
    assert rows
    assert all(r[2] == "gpt-test-003" and "team=infra" in r[6].split() for r in rows)

    event_id = site.event_ids["a-7"]
    browser.get(f"{site.url}/ui/p/ui-a/events/{event_id}")
    shot(browser, screenshots, "event")
    async with site.client() as client:
        event = (await client.get(f"/v1/usage/events/{event_id}",
                                  headers=bearer(site.keys["a"]))).json()  # fmt: skip
    assert table(browser, "event-components") == components(event)
    assert browser.find_element(By.ID, "event-total").text == f"{event['total']} USD"
    assert browser.find_element(By.ID, "event-price-version").text == str(event["price_version"])
    assert "None" in browser.find_element(By.ID, "event-adjustments").text


def components(event: dict[str, Any]) -> list[list[str]]:
    """An event's components as its page shows them: the quantities grouped by thousands, the
    unit prices and the costs each at their column's scale."""
    found = event["components"]
    prices = at_scale([c["unit_price"] for c in found])
    costs = at_scale([c["cost"] for c in found])
    return [[c["name"], f"{c['quantity']:,}", price, cost]
            for c, price, cost in zip(found, prices, costs, strict=True)]  # fmt: skip


async def reprice(site: Site, key: str, model: str) -> dict[str, Any]:
    """An applied reprice of `model`'s events, asked for over HTTP and done as the task runner
    does its job (no task runner runs here); the run as the API then reports it."""
    async with site.client() as client:
        asked = await client.post("/v1/usage/reprice", headers=bearer(key),
                                  json={"dry_run": False, "model": model})  # fmt: skip
        assert asked.status_code == 202, asked.text
        run_id = asked.json()["id"]
        assert await execute_as_the_job(site.database_url, run_id) is Outcome.DONE
        done = await client.get(f"/v1/usage/reprice/{run_id}", headers=bearer(key))
    assert done.status_code == 200, done.text
    run: dict[str, Any] = done.json()
    assert run["state"] == "done", run
    return run


async def test_a_repriced_event_shows_its_adjustment_as_the_api_reports_the_change(
    browser: WebDriver, site: Site, screenshots: Path
) -> None:
    # ui-c: ui-a's events and totals stay as the other tests read them
    model = "ui-launch-model"  # unknown to the catalog when the call is recorded
    async with site.client() as client:
        call = {"id": "c-1", "model": model, "usage": {"input_tokens": 1000, "output_tokens": 500}}
        recorded = await client.post("/v1/usage", headers=bearer(site.keys["c"]),
                                     json={"events": [call]})  # fmt: skip
        assert recorded.status_code in (200, 201), recorded.text
        event_id = recorded.json()["results"][0]["event_id"]

        async def event() -> dict[str, Any]:
            found = await client.get(f"/v1/usage/events/{event_id}",
                                     headers=bearer(site.keys["c"]))  # fmt: skip
            assert found.status_code == 200, found.text
            body: dict[str, Any] = found.json()
            return body

        before = await event()
        # the model gets a price (a price override), then the reprice prices the call
        prices = {"input_cost_per_token": "0.00001", "output_cost_per_token": "0.00002"}
        override = {"provider": "acme", "model": model, "reason": "launch", "prices": prices}
        added = await client.post("/v1/overrides", headers=admin(), json=override)
        assert added.status_code == 201, added.text
        run = await reprice(site, site.keys["c"], model)
        after = await event()
    assert run["events_changed"] == 1
    assert (before["pricing_status"], after["pricing_status"]) == ("unpriced", "priced")

    sign_in(browser, site, site.keys["c"])
    browser.get(f"{site.url}/ui/p/ui-c/events/{event_id}")
    shot(browser, screenshots, "event-adjusted")

    def shown(value: Any) -> str:
        return "none" if value is None else str(value)

    (row,) = table(browser, "event-adjustments")
    assert row[1:] == [
        str(run["id"]),
        f"{before['pricing_status']} → {after['pricing_status']}",
        f"{before['total'] or 'unpriced'} → {after['total'] or 'unpriced'}",
        f"{shown(before['price_version'])} → {shown(after['price_version'])}",
    ]
    # made while its run ran
    started, finished = (datetime.fromisoformat(run[k]) for k in ("started_at", "finished_at"))
    assert started <= datetime.fromisoformat(row[0]) <= finished
    # the event itself shows its price now, as the API does
    assert browser.find_element(By.ID, "event-total").text == f"{after['total']} USD"
    assert table(browser, "event-components") == components(after)
    # priced by an override of a model the source does not have: no price version, and why
    assert after["price_version"] is None, after
    assert after["override_id"] is not None, after
    assert browser.find_element(By.ID, "event-price-version").text == (
        "none: the price override below prices a model the catalog's source does not have"
    )


async def test_explore_draws_its_chart_and_a_shared_url_shows_the_same_in_a_new_session(
    browser: WebDriver, site: Site
) -> None:
    sign_in(browser, site, site.keys["a-read"])
    today = datetime.now(BERLIN).date()
    since, until = (today - timedelta(days=20)).isoformat(), (today + timedelta(days=1)).isoformat()
    browser.get(f"{site.url}/ui/p/ui-a/explore?from={since}&to={until}&bucket=week"
                "&group_by=tag%3Ateam")  # fmt: skip
    shared = browser.current_url
    rows, pivot = table(browser, "rows"), table(browser, "explore-table")
    assert rows
    assert pivot
    drawn = browser.execute_script(
        "const c = Chart.getChart('explore'); return c ? "
        "[c.config.type, c.data.labels, c.data.datasets.map(d => [d.label, d.exact])] : null;"
    )
    columns = header(browser, "explore-table")[1:-1]
    series = [[c, [row[1 + i] for row in pivot]] for i, c in enumerate(columns)]
    assert drawn == ["bar", [row[0] for row in pivot], series]

    # the URL, opened by someone else in a session of their own, answers the same question
    browser.delete_all_cookies()
    sign_in(browser, site, site.keys["a"])
    browser.get(shared)
    assert browser.current_url == shared
    assert table(browser, "rows") == rows
    assert table(browser, "explore-table") == pivot


#: The colour of a chart's "(other)" series (ui.js).
GREY = "#868e96"


def test_no_two_groups_of_a_chart_share_a_colour_and_only_the_rest_is_grey(
    browser: WebDriver, site: Site
) -> None:
    """ui-a's 11 models (10 priced, one unpriced) are more groups than the palette's colours:
    each still has a colour of its own. The rest of a `top` is grey, and no group is."""
    sign_in(browser, site, site.keys["a-read"])
    today = datetime.now(BERLIN).date()
    since, until = (today - timedelta(days=40)).isoformat(), (today + timedelta(days=1)).isoformat()
    drawn = "return Chart.getChart('explore').data.datasets.map(d => [d.label, d.backgroundColor]);"
    explore = f"{site.url}/ui/p/ui-a/explore?from={since}&to={until}&group_by=model"
    browser.get(explore)
    every = browser.execute_script(drawn)
    assert len(every) == 11, every
    assert len({colour for _, colour in every}) == 11, every
    assert all(colour != GREY for _, colour in every)
    browser.get(explore + "&top=3")
    topped = browser.execute_script(drawn)
    assert [label for label, _ in topped][-1] == "(other)"
    assert [colour == GREY for _, colour in topped] == [False, False, False, True]


def test_a_group_keeps_its_colour_whatever_its_rank(browser: WebDriver, site: Site) -> None:
    """Colours went by rank: a model changed colour from the overview to Explore, and when new
    spend moved it up. A label's colour now comes from its name (and the chart's labels, for
    two names that would take the same colour), never from the order of the series."""
    sign_in(browser, site, site.keys["a-read"])
    browser.get(f"{site.url}/ui/p/ui-a/")
    overview = dict(browser.execute_script(
        "return Chart.getChart('daily').data.datasets.map(d => [d.label, d.backgroundColor]);"
    ))  # fmt: skip
    assert len(overview) >= 3, overview
    through(browser, browser.find_element(By.LINK_TEXT, "Explore this"))
    explore = dict(browser.execute_script(
        "return Chart.getChart('explore').data.datasets.map(d => [d.label, d.backgroundColor]);"
    ))  # fmt: skip
    assert explore == overview
    labels = list(overview)
    for order in (labels[::-1], labels[1:] + labels[:1]):
        assert (
            browser.execute_script("return window.aiserverChartColours(arguments[0]);", order)
            == overview
        )
    many = [f"model-{n}" for n in range(40)]
    drawn = browser.execute_script("return window.aiserverChartColours(arguments[0]);", many)
    assert len(set(drawn.values())) == 40  # never two alike, however many
    assert GREY not in drawn.values()


def _lab(css: str) -> tuple[float, float, float]:
    """A colour as the chart's script writes it (`#0b5cad`, `hsl(295.1, 65%, 38%)`) in CIELAB."""
    if css.startswith("#"):
        rgb = [int(css[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    else:
        hue, saturation, lightness = (float(v.strip(" %")) for v in css[4:-1].split(","))
        red, green, blue = colorsys.hls_to_rgb(hue / 360, lightness / 100, saturation / 100)
        rgb = [red, green, blue]
    linear = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in rgb]
    x, y, z = (
        sum(w * v for w, v in zip(row, linear, strict=True)) / white
        for row, white in (((0.4124, 0.3576, 0.1805), 0.95047), ((0.2126, 0.7152, 0.0722), 1.0),
                           ((0.0193, 0.1192, 0.9505), 1.08883))
    )  # fmt: skip

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def test_no_two_series_of_a_chart_look_alike(browser: WebDriver, site: Site) -> None:
    """Three of the demo's costliest models were drawn in three purples (colour differences of
    11 to 20 in CIELAB) and two others in the same blue: each label hashed onto 50 colours, some
    of them near-identical. Labels now hash onto 18 colours of which every pair, and each with
    the grey of "(other)", differs by at least 25 (the palette's two closest colours): checked
    here pair by pair, so a chart of up to 18 series never draws two alike."""
    sign_in(browser, site, site.keys["a-read"])
    palette = browser.execute_script("return window.aiserverChartPalette;")
    assert len(palette) == len(set(palette)) == 18
    closest = min(math.dist(_lab(a), _lab(b))
                  for a, b in itertools.combinations([*palette, GREY], 2))  # fmt: skip
    assert closest >= 25, closest
    script = "return window.aiserverChartColours(arguments[0]);"
    reported = ["claude-sonnet-4-5", "gpt-4o", "gpt-4o-mini", "gpt-4.1",
                "text-embedding-3-small", "claude-haiku-4-5", "(other)"]  # fmt: skip
    rng = random.Random(7)
    charts = [reported] + [
        [f"model-{rng.randrange(10**6)}" for _ in range(size)] + ["(other)"]
        for size in (3, 8, 8, 8, 12, 18)
        for _ in range(10)
    ]
    for labels in charts:
        drawn = browser.execute_script(script, labels)
        assert drawn["(other)"] == GREY
        series = [colour for label, colour in drawn.items() if label != "(other)"]
        assert len(set(series)) == len(series), drawn  # each its own
        assert set(series) <= set(palette), drawn  # so no two alike
        # the same labels in another order: the same colours
        assert browser.execute_script(script, labels[::-1]) == drawn


def test_an_answer_without_groups_shows_its_total_once(browser: WebDriver, site: Site) -> None:
    """No group_by: the one column is the total, which the table used to show twice (`week,
    total, total`)."""
    sign_in(browser, site, site.keys["a-read"])
    today = datetime.now(BERLIN).date()
    since, until = (today - timedelta(days=40)).isoformat(), (today + timedelta(days=1)).isoformat()
    browser.get(f"{site.url}/ui/p/ui-a/explore?from={since}&to={until}&bucket=week")
    assert header(browser, "explore-table") == ["week", "total"]
    rows = table(browser, "explore-table")
    assert rows
    assert all(len(row) == 2 for row in rows), rows
    assert "a week starts on Monday" in browser.find_element(By.ID, "query-help").text
    drawn = "return Chart.getChart('explore').data.datasets.map(d => d.label);"
    assert browser.execute_script(drawn) == ["total"]  # the chart still draws it
    # it said "Spend per week by total"
    assert text(browser.find_element(By.ID, "explore-caption")) == "Spend per week, in USD"


def test_a_question_that_matches_no_usage_says_so_and_draws_no_empty_chart(
    browser: WebDriver, site: Site
) -> None:
    """Before, a window with no event drew a chart of empty days over its table of zeros."""
    sign_in(browser, site, site.keys["a-read"])
    browser.get(f"{site.url}/ui/p/ui-a/explore?from=2020-01-01&to=2020-01-04&bucket=day")
    assert text(browser.find_element(By.ID, "answer-none")).startswith(
        "No usage matches this question"
    )
    assert browser.find_elements(By.ID, "explore") == []  # no chart
    assert table(browser, "explore-table") == [
        ["2020-01-01", "0"],
        ["2020-01-02", "0"],
        ["2020-01-03", "0"],
    ]
    assert text(browser.find_element(By.ID, "answer-total")) == "0"


async def test_an_answer_too_long_to_draw_is_offered_as_csv_with_what_to_ask_instead(
    browser: WebDriver, site: Site
) -> None:
    """Hours by user over two months (38,000 rows) made a page of 16 MB that a browser took 47
    s to show. Past MAX_SHOWN_ROWS the page draws and lists nothing, says why, and offers the
    CSV; a longer bucket over the same events is drawn."""
    key = await project_with_key(site, "ui-long", "Long Answer", ["ingest", "read"])
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=61)
    hours, users = 60, MAX_SHOWN_ROWS // 60 + 10  # 5,400 rows of (hour, user)
    events = [
        {"id": f"long-{h}-{u}", "model": "gpt-test-001", "tags": {"user": f"u{u}"},
         "usage": {"input_tokens": 10}, "occurred_at": (start + timedelta(hours=h)).isoformat()}
        for h in range(hours) for u in range(users)
    ]  # fmt: skip
    async with site.client() as client:
        answer = await client.post("/v1/usage", json={"events": events}, headers=bearer(key))
    assert answer.status_code == 200, answer.text
    assert answer.json()["recorded"] == hours * users
    sign_in(browser, site, key)
    window = (
        f"from={start:%Y-%m-%dT%H:%M:%SZ}&to={start + timedelta(hours=hours):%Y-%m-%dT%H:%M:%SZ}"
    )
    browser.get(f"{site.url}/ui/p/ui-long/explore?{window}&bucket=hour&group_by=tag:user")
    said = browser.find_element(By.ID, "answer-too-long").text
    assert f"{hours * users:,} rows" in said
    assert f"this page shows at most {MAX_SHOWN_ROWS:,}" in said
    assert browser.find_elements(By.ID, "explore") == []  # no chart
    assert browser.find_elements(By.ID, "rows") == []
    assert browser.find_element(By.ID, "csv-now").get_attribute("href")
    async with site.client() as client:  # the CSV holds every row
        csv_now = browser.find_element(By.ID, "csv-now").get_attribute("href") or ""
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
        got = await client.get(csv_now, headers={"cookie": cookie})
    assert got.status_code == 200
    assert len(got.text.strip().splitlines()) == 1 + hours * users
    browser.get(f"{site.url}/ui/p/ui-long/explore?{window}&bucket=day&group_by=tag:user")
    assert browser.find_elements(By.ID, "answer-too-long") == []
    assert browser.find_elements(By.ID, "explore")
    assert table(browser, "rows")
    # few rows, but many empty buckets: an hour's buckets over a year by 3 groups (27,000
    # bars), its few rows among them
    year = f"from={start - timedelta(days=370):%Y-%m-%d}&to={start + timedelta(days=1):%Y-%m-%d}"
    browser.get(f"{site.url}/ui/p/ui-long/explore?{year}&bucket=hour&group_by=tag:user&top=2")
    said = browser.find_element(By.ID, "answer-too-long").text
    assert f"at most {MAX_SHOWN_CELLS:,})" in said, said
    assert f"{MAX_SHOWN_ROWS:,})" in said  # the rows are few
    assert browser.find_elements(By.ID, "explore") == []


async def test_a_project_without_usage_says_so_and_how_usage_is_reported(
    browser: WebDriver, site: Site
) -> None:
    """A project with no usage showed an empty chart scaled 0 to 1 and 30 rows of 0."""
    key = await project_with_key(site, "ui-empty", "Nothing Yet", ["read"])
    sign_in(browser, site, key)
    said = browser.find_element(By.ID, "daily-none").text
    assert said.startswith("No usage recorded in the last 30 days.")
    assert "POST /v1/usage" in said
    assert browser.find_elements(By.ID, "daily") == []  # no chart
    assert browser.find_elements(By.ID, "daily-table") == []


def test_explore_s_form_reads_in_words_and_sends_the_api_s_values(
    browser: WebDriver, site: Site
) -> None:
    """ "Bucket", "Top groups", `tag:team` and `partially_priced` were the API's words."""
    sign_in(browser, site, site.keys["a-read"])
    browser.get(f"{site.url}/ui/p/ui-a/explore")
    labels = [text(e) for e in browser.find_elements(By.CSS_SELECTOR, "form.query label")]
    assert "Per period (bucket)" in labels
    assert 'Show the costliest N groups (the rest as "(other)")' in labels
    team = browser.find_element(By.CSS_SELECTOR, "input[name=group_by][value='tag:team']")
    assert text(team.find_element(By.XPATH, "..")) == "tag team"
    status = Select(browser.find_element(By.ID, "q-status"))
    said = {o.get_attribute("value"): text(o) for o in status.options}
    assert said["partially_priced"] == "partially priced"


async def test_a_selection_whose_every_event_is_unpriced_reads_unpriced_never_zero(
    browser: WebDriver, site: Site
) -> None:
    """Before, Explore filtered to an unknown model headlined "Spend: 0.00 USD" and its chart's
    table wrote 0 in the total column beside the model's `unpriced`; the overview listed the
    unpriced event at its UTC time, where every other page shows the project's clock."""
    sign_in(browser, site, site.keys["a-read"])
    (link,) = browser.find_elements(By.CSS_SELECTOR, "#unpriced a")
    shown = link.find_element(By.TAG_NAME, "time")
    exact = datetime.fromisoformat(shown.get_attribute("datetime") or "")
    assert exact.tzinfo == UTC
    on_clock = exact.astimezone(BERLIN)
    assert text(link) == f"mystery-model-9000 at {on_clock.isoformat()}: why?"

    day = on_clock.date()
    since, until = (day - timedelta(days=1)).isoformat(), (day + timedelta(days=2)).isoformat()
    browser.get(
        f"{site.url}/ui/p/ui-a/explore?from={since}&to={until}&bucket=day&group_by=model"
        "&model=mystery-model-9000"
    )
    answer = await spend(site, **{
        "from": since, "to": until, "bucket": "day", "tz": "Europe/Berlin", "group_by": "model",
        "model": "mystery-model-9000",
    })  # fmt: skip
    assert (answer["total"]["cost"], answer["total"]["events"]) == ("0", 1)
    assert answer["total"]["unpriced_events"] == 1
    assert text(browser.find_element(By.ID, "answer-about")) == "unpriced"
    assert browser.find_elements(By.ID, "answer-total") == []
    assert text(browser.find_element(By.ID, "answer-unpriced")).startswith(
        "No cost yet: the one event here is unpriced"
    )
    rows = {row[0]: row[1:] for row in table(browser, "explore-table")}
    assert rows == {
        day.isoformat(): ["unpriced", "unpriced"],  # the model's cell and the day's total
        (day - timedelta(days=1)).isoformat(): ["0", "0"],  # no event: nothing spent
        (day + timedelta(days=1)).isoformat(): ["0", "0"],
    }


async def test_a_project_whose_every_event_is_unpriced_shows_no_figure_that_reads_as_free(
    browser: WebDriver, site: Site
) -> None:
    """Its month card said `unpriced`, and under it a pace of 0 USD, "this month has spent 100%
    less" than last, and that 0 was a lower bound; the top models' total read 0."""
    key = await project_with_key(site, "ui-unp", "Unpriced Only", ["ingest", "read"])
    async with site.client() as client:
        recorded = await client.post("/v1/usage", headers=bearer(key), json={
            "id": "unp-1", "model": "mystery-model-9000",
            "usage": {"input_tokens": 10, "output_tokens": 5},
        })  # fmt: skip
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["pricing_status"] == "unpriced"
    sign_in(browser, site, key)
    card = browser.find_element(By.ID, "period-1")
    assert text(card.find_element(By.CLASS_NAME, "amount")) == "unpriced"
    assert "1 event, 1 unpriced" in text(card)
    assert card.find_elements(By.ID, "month-pace") == []
    assert card.find_elements(By.ID, "month-before") == []
    assert card.find_elements(By.CLASS_NAME, "lower-bound") == []
    total = browser.find_element(By.CSS_SELECTOR, "#top-models tfoot td")
    assert text(total) == "unpriced"


def instant(text: str) -> datetime:
    """A time as the API writes it (`...Z` or an offset)."""
    return datetime.fromisoformat(text)
