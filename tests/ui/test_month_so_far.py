"""The overview's month to date against two yardsticks: where the month ends at the rate so far
(spent × the month's length ÷ the time passed, from a tenth of the month on), and what last
month had spent by the same point (the same day of the month and time on the project's clock,
or last month's end where it is shorter), with the change in percent. Checked against the API:
`GET /v1/spend` over the windows the card names, at the instant the card says it was read."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, time, timedelta
from decimal import Context, Decimal
from zoneinfo import ZoneInfo

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from aiserver.api.ui.overview import same_point_last_month

from .conftest import Site, as_said, bearer, half_up, project_with_key, sign_in, text

pytestmark = pytest.mark.slow

DIGITS = Context(prec=60)
BERLIN = ZoneInfo("Europe/Berlin")
PACE = re.compile(
    r"At this pace: ≈ (?P<amount>[0-9,.]+) USD by the month's end, the spend of the "
    r"(?P<passed>[0-9]+)% of the month passed carried on at the same rate\."
)
BEFORE = re.compile(
    r"(?:Last month to the same point \(up to (?P<until>\S+)\)|Last month, whole \(it had "
    r"fewer days; up to (?P<whole>\S+)\)): (?P<cost>[0-9,.]+) USD"
    r"(?:: this month has spent (?P<change>[0-9]+)% (?P<way>more|less)|: (?P<same>about the "
    r"same as this month)|: (?P<none>it had spent nothing by then))?\."
)


def test_the_same_point_last_month_is_its_day_and_time_or_its_end() -> None:
    at = datetime(2026, 12, 6, 10, 12, tzinfo=BERLIN)
    assert same_point_last_month(at, at.date().replace(day=1)) == datetime(
        2026, 11, 6, 10, 12, tzinfo=BERLIN
    )
    # the 31st of March against February's 28 days: February whole
    march = datetime(2027, 3, 31, 9, 0, tzinfo=BERLIN)
    assert same_point_last_month(march, march.date().replace(day=1)) == datetime(
        2027, 3, 1, tzinfo=BERLIN
    )
    # across a clock change: the same day and time on the clock (October was on summer time)
    november = datetime(2026, 11, 6, 10, 12, tzinfo=BERLIN)
    point = same_point_last_month(november, november.date().replace(day=1))
    assert point == datetime(2026, 10, 6, 10, 12, tzinfo=BERLIN)
    assert point.utcoffset() == timedelta(hours=2)
    # the 29th of March, 2027 (no 29th of February): February whole
    assert same_point_last_month(march.replace(day=29), march.date().replace(day=1)) == (
        datetime(2027, 3, 1, tzinfo=BERLIN)
    )


async def test_the_month_card_says_its_pace_and_last_month_to_the_same_point(
    browser: WebDriver, site: Site
) -> None:
    """A project of its own on UTC's clock, with usage in the first minutes of last month and of
    this month, so that both windows spend."""
    key = await project_with_key(site, "ui-month", "Month Card", ["ingest", "read"])
    today = datetime.now(UTC)
    this_start = datetime.combine(today.date().replace(day=1), time(), tzinfo=UTC)
    last_start = datetime.combine((this_start - timedelta(days=1)).date().replace(day=1), time(),
                                  tzinfo=UTC)  # fmt: skip
    events = [
        {"id": f"m-{n}", "model": "gpt-test-001", "occurred_at": at.isoformat(),
         "usage": {"input_tokens": 1000 * (n + 1), "output_tokens": 100}}
        for n, at in enumerate([last_start + timedelta(seconds=30),
                                this_start + timedelta(seconds=30)])
        if at < today
    ]  # fmt: skip
    async with site.client() as client:
        sent = await client.post("/v1/usage", json={"events": events}, headers=bearer(key))
    assert sent.status_code == 200, sent.text
    sign_in(browser, site, key)
    browser.get(f"{site.url}/ui/p/ui-month/")
    card = browser.find_element(By.ID, "period-1")
    as_of = datetime.fromisoformat(text(card.find_elements(By.CSS_SELECTOR, ".sub .when")[1]))
    spent = Decimal(text(card.find_element(By.CSS_SELECTOR, ".exact .cost")).replace(",", ""))
    now = as_of.astimezone(UTC)
    start = datetime.combine(now.date().replace(day=1), time(), tzinfo=UTC)
    end = datetime.combine((start + timedelta(days=32)).date().replace(day=1), time(), tzinfo=UTC)
    assert start == this_start

    said = text(browser.find_element(By.ID, "month-pace"))
    length, passed = (end - start).total_seconds(), (now - start).total_seconds()
    if passed / length < 0.1:  # the 1st to the 4th of the month
        assert said == "At this pace: not projected yet, less than a tenth of the month has passed."
    else:
        found = PACE.fullmatch(said)
        assert found, said
        exact = DIGITS.divide(spent * Decimal(int(length)), Decimal(int(passed)))
        assert Decimal(found["amount"].replace(",", "")) == as_said(exact), (said, exact)
        assert int(found["passed"]) == int(Decimal(passed) / Decimal(length) * 100)  # down

    point = same_point_last_month(now, start.date())
    async with site.client() as client:
        asked = await client.get("/v1/spend", headers=bearer(key), params={
            "from": last_start.isoformat(), "to": point.isoformat()})  # fmt: skip
    assert asked.status_code == 200, asked.text
    last = Decimal(asked.json()["total"]["cost"])
    assert last > 0  # the call of last month's first minute
    found = BEFORE.fullmatch(text(browser.find_element(By.ID, "month-before")))
    assert found, text(browser.find_element(By.ID, "month-before"))
    # from the 29th to the 31st, after a shorter month: last month whole, and said so
    assert datetime.fromisoformat(found["until"] or found["whole"]) == point
    assert bool(found["whole"]) == (point == start)
    assert Decimal(found["cost"].replace(",", "")) == last
    change = half_up(DIGITS.divide((spent - last) * 100, last), "1")
    if change == 0:
        assert found["same"], found.groupdict()
    else:
        assert (Decimal(found["change"]), found["way"]) == (
            abs(change),
            "more" if change > 0 else "less",
        ), (spent, last)


@pytest.mark.parametrize(
    ("slug", "last_month", "said"),
    [
        # every call of last month's window unpriced: not "0 USD: it had spent nothing by then"
        ("ui-month-unpriced", ["in-house-llm"],
         r"unpriced \(1 event without a price yet, which is not 0 USD\)\."),
        # one of them unpriced: a lower bound, said so, and no change in percent from it
        ("ui-month-partly", ["in-house-llm", "gpt-test-001"],
         r"at least (?P<cost>[0-9,.]+) USD \(1 unpriced\): not compared, as last month's "
         r"figure counts what has no price as 0\."),
    ],
)  # fmt: skip
async def test_last_month_s_unpriced_calls_are_not_a_zero_nor_a_base_for_a_change(
    browser: WebDriver, site: Site, slug: str, last_month: list[str], said: str
) -> None:
    """A finance review found the card saying "0 USD: it had spent nothing by then" of a window
    whose only call had no price, and "this month has spent 1567% more" against a figure that
    counted an unpriced call as 0."""
    key = await project_with_key(site, slug, "Month Card", ["ingest", "read"])
    today = datetime.now(UTC)
    if today.day == 1 and today.hour == 0 and today.minute == 0:
        # last month's calls are in its first minute: wait until the same point is past them
        await asyncio.sleep(61 - today.second)
        today = datetime.now(UTC)
    this_start = datetime.combine(today.date().replace(day=1), time(), tzinfo=UTC)
    last_start = datetime.combine((this_start - timedelta(days=1)).date().replace(day=1), time(),
                                  tzinfo=UTC)  # fmt: skip
    events = [
        {"id": f"m-{n}", "model": model, "occurred_at": (last_start + timedelta(seconds=30 + n))
         .isoformat(), "usage": {"input_tokens": 1000, "output_tokens": 100}}
        for n, model in enumerate(last_month)
    ]  # fmt: skip
    if this_start + timedelta(seconds=30) < today:
        at = (this_start + timedelta(seconds=30)).isoformat()
        events.append(
            {
                "id": "m-now",
                "model": "gpt-test-001",
                "usage": {"input_tokens": 5000},
                "occurred_at": at,
            }
        )
    async with site.client() as client:
        sent = await client.post("/v1/usage", json={"events": events}, headers=bearer(key))
        assert sent.status_code == 200, sent.text
    sign_in(browser, site, key)
    browser.get(f"{site.url}/ui/p/{slug}/")
    shown = text(browser.find_element(By.ID, "month-before"))
    found = re.fullmatch(r"Last month(?: to the same point|, whole) \(.*?\): " + said, shown)
    assert found, shown
    assert "spent nothing" not in shown
    assert "%" not in shown
    if found.groupdict().get("cost"):
        async with site.client() as client:
            asked = await client.get("/v1/spend", headers=bearer(key), params={
                "from": last_start.isoformat(), "to": (last_start + timedelta(minutes=1))
                .isoformat()})  # fmt: skip
        total = asked.json()["total"]
        assert total["unpriced_events"] == 1
        assert Decimal(found["cost"].replace(",", "")) == Decimal(total["cost"])
