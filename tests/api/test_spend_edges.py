"""Spend at the odd corners of valid questions, over the API and on the dashboard: windows at
the ends of the calendar (year 1, year 9999) are answered, or refused naming the field, never a
500; token sums past a BIGINT's range are exact; the hour that a clock change repeats reads as
two different hours on the charts; the overview lists the unpriced events it counts."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aiserver.api.ui.present import pivot

from ..ledger import test_spend
from ..ledger.test_spend import Ledger
from ..support.folding import fold_all
from .conftest import Client, Tenants, bearer, make_key, make_project
from .test_endpoints import assert_problem
from .test_ui_explore import sign_in
from .test_usage_events import record

SPEND = "/v1/spend"
ledger = test_spend.ledger  # the spend tests' fixture: a ledger on the test database


@pytest.mark.parametrize(
    ("params", "starts"),
    [
        # the last month of the calendar by month: its next month is past year 9999
        (
            {"from": "9999-12-01", "to": "9999-12-31", "bucket": "month", "tz": "UTC"},
            ["9999-12-01T00:00:00Z"],
        ),
        (
            {"from": "9999-12-20", "to": "9999-12-31", "bucket": "week", "tz": "UTC"},
            ["9999-12-20T00:00:00Z", "9999-12-27T00:00:00Z"],
        ),
        (
            {"from": "9999-12-30", "to": "9999-12-31T02:00", "bucket": "day", "tz": "Asia/Tokyo"},
            ["9999-12-30T00:00:00+09:00", "9999-12-31T00:00:00+09:00"],
        ),
        (
            {
                "from": "9999-12-31T21:30:00Z",
                "to": "9999-12-31T23:30:00Z",
                "bucket": "hour",
                "tz": "UTC",
            },
            ["9999-12-31T21:30:00Z", "9999-12-31T22:00:00Z", "9999-12-31T23:00:00Z"],
        ),
        # no bucket, inside the last hour of the calendar (an hour cut by from and to)
        (
            {"from": "9999-12-31T23:10:00Z", "to": "9999-12-31T23:20:00Z", "tz": "UTC"},
            ["9999-12-31T23:10:00Z"],
        ),
        # the first day of the calendar east of UTC: its midnight is before year 1 in UTC (a
        # zone of a fixed offset: in year 1 every named zone keeps its local mean time)
        (
            {
                "from": "0001-01-01T12:00:00Z",
                "to": "0001-01-03T00:00:00Z",
                "bucket": "day",
                "tz": "Etc/GMT-9",
            },
            ["0001-01-01T21:00:00+09:00", "0001-01-02T00:00:00+09:00", "0001-01-03T00:00:00+09:00"],
        ),
        (
            {
                "from": "0001-01-01T00:10:00Z",
                "to": "0001-01-01T02:00:00Z",
                "bucket": "hour",
                "tz": "Etc/GMT-9",
            },
            ["0001-01-01T09:10:00+09:00", "0001-01-01T10:00:00+09:00"],
        ),
        (
            {
                "from": "0001-01-01T12:00:00Z",
                "to": "0001-02-02T00:00:00Z",
                "bucket": "month",
                "tz": "Etc/GMT-9",
            },
            ["0001-01-01T21:00:00+09:00", "0001-02-01T00:00:00+09:00"],
        ),
    ],
)
async def test_a_window_at_an_end_of_the_calendar_is_answered(
    client: Client, tenants: Tenants, params: dict[str, Any], starts: list[str]
) -> None:
    response = await client.get(SPEND, headers=bearer(tenants.admin_a["key"]), params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [b["start"] for b in body["buckets"]] == starts
    assert [b["end"] for b in body["buckets"]][-1] == body["to"]
    assert body["total"]["cost"] == "0"


async def test_the_first_hours_of_the_calendar_in_a_project_west_of_utc_are_answered(
    client: Client, tenants: Tenants
) -> None:
    """A window in UTC of the first hours of year 1, asked of a project whose clock is west of
    UTC (its daily rollups are of its own days, which began before year 1 there): answered
    from the hourly rollups, where finding its days raised OverflowError, a 500."""
    await make_project(client, "acme-west", time_zone="America/Los_Angeles")
    key = await make_key(client, "acme-west", ["read"])
    params = {"from": "0001-01-01T00:00:00Z", "to": "0001-01-01T03:00:00Z", "tz": "UTC",
              "bucket": "hour"}  # fmt: skip
    response = await client.get(SPEND, headers=bearer(key["key"]), params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [b["start"] for b in body["buckets"]] == [
        "0001-01-01T00:00:00Z", "0001-01-01T01:00:00Z", "0001-01-01T02:00:00Z",
    ]  # fmt: skip
    assert body["total"]["cost"] == "0"


@pytest.mark.parametrize(
    ("params", "field"),
    [  # a time whose clock in tz would read before year 1 or after year 9999
        (
            {
                "from": "0001-01-01T00:00:00Z",
                "to": "0001-01-02T00:00:00Z",
                "tz": "America/New_York",
            },
            "from",
        ),
        ({"from": "9999-12-31T00:00:00Z", "to": "9999-12-31T23:00:00Z", "tz": "Asia/Tokyo"}, "to"),
    ],
)
async def test_a_window_whose_clock_is_beyond_the_calendar_is_422_naming_it(
    client: Client, tenants: Tenants, params: dict[str, Any], field: str
) -> None:
    response = await client.get(SPEND, headers=bearer(tenants.admin_a["key"]), params=params)
    body = assert_problem(response, 422, f"{field}: ")
    assert body["fields"] == [field]


async def test_the_hour_that_autumn_repeats_is_two_rows_that_read_apart(ledger: Ledger) -> None:
    await ledger.record(ledger.project, [  # Berlin: 02:00+02:00 and then 02:00+01:00 again
        {"model": "gpt-x", "usage": {"input_tokens": 1000}, "occurred_at": "2026-10-25T00:30:00Z"},
        {"model": "gpt-x", "usage": {"input_tokens": 2000}, "occurred_at": "2026-10-25T01:30:00Z"},
    ])  # fmt: skip
    answer = await ledger.spend(since="2026-10-25T01:00", until="2026-10-25T04:00", bucket="hour")
    chart = pivot(answer)
    assert [(label, total) for label, _, total in chart.rows] == [
        ("2026-10-25 01:00", "0"),
        ("2026-10-25 02:00+02:00", "0.0011"),
        ("2026-10-25 02:00+01:00", "0.0022"),
        ("2026-10-25 03:00", "0"),
    ]
    assert chart.chart()["labels"] == [label for label, _, _ in chart.rows]


async def test_token_sums_past_the_range_of_bigint_are_answered_exactly(ledger: Ledger) -> None:
    """One event may report up to 10**15 tokens (`MAX_QUANTITY`); the rollups sum them as
    NUMERIC so that no sum overflows, and a spend answer must not either (a client that reports
    absurd counts would otherwise break every answer of its project)."""
    count, tokens = 9300, 10**15  # 9.3e18 > 2**63 - 1
    call = {"model": "mystery-1", "usage": {"input_tokens": tokens, "output_tokens": tokens}}
    for start in range(0, count, 1000):
        at = f"2026-11-29T10:{5 + start // 1000:02d}:00Z"
        await ledger.record(
            ledger.project, [{**call, "occurred_at": at}] * min(1000, count - start)
        )
    await fold_all(ledger.pool)
    await ledger.record(ledger.project, [{**call, "occurred_at": "2026-11-29T11:00:00Z"}])
    # the whole hours from the rollups and the tail; then hour 10 cut by from, read raw
    for since in ("2026-11-29", "2026-11-29T11:01"):
        answer = await ledger.spend(since=since, until="2026-11-30", group_by=["model"])
        totals = answer.total
        assert (totals.events, totals.input_tokens, totals.output_tokens) == (
            count + 1, (count + 1) * tokens, (count + 1) * tokens,
        )  # fmt: skip
        assert [(g.key, g.input_tokens) for g in answer.groups] == [
            ({"model": "mystery-1"}, (count + 1) * tokens)
        ]


async def test_the_overview_lists_the_unpriced_events_of_the_days_it_counts(
    client: Client, tenants: Tenants
) -> None:
    now = datetime.now(UTC)
    old, new = await record(client, tenants.ingest_a["key"], *(
        {"id": key, "model": "mystery-model", "usage": {"input_tokens": 5},
         "occurred_at": (now - age).isoformat()}
        for key, age in (("old", timedelta(days=45)), ("new", timedelta(hours=2)))
    ))  # fmt: skip
    await sign_in(client)
    page = (await client.get("/ui/p/acme-a/")).text
    assert "1 unpriced event in the last 30 days" in page
    listed = re.findall(r'href="/ui/p/acme-a/events/(\d+)"', page.split('id="unpriced"')[1])
    assert listed == [str(new["event_id"])]  # not the one of 45 days ago, which it does not count
    assert str(old["event_id"]) not in listed
