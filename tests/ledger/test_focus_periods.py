"""A FOCUS row's billing period is the call's month on the project's clock, and its charge
period the call's hour on that clock, both written in UTC: before, both were UTC's, so a call
made on the evening of November 30 in New York (December 1 in UTC) was billed in December while
the dashboard and `GET /v1/spend` counted it in November."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from aiserver.ledger.store import Project
from aiserver.ledger.usage.focus import COLUMNS, rows


def _project(time_zone: str) -> Project:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return Project(id=1, slug="p", name="P", time_zone=time_zone, rollup_tags=(),
                   created_at=at, updated_at=at, archived_at=None)  # fmt: skip


def _event(occurred_at: datetime) -> dict[str, Any]:
    return {
        "status": "priced", "components": '[["input", 1000, "0.000002", "0.002"]]',
        "occurred_at": occurred_at, "matched_provider": "openai", "matched_model": "gpt-x",
        "unpriced": [], "price_version": 7, "override_id": None, "tags": "{}", "id": 1,
        "event_key": "k", "model": "gpt-x", "provider": None, "service_tier": "standard",
        "catalog_version": 3,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("time_zone", "occurred_at", "charge", "billing"),
    [
        # 22:10 on November 30 in New York (EST, -05:00): November, whose start was in EDT
        ("America/New_York", datetime(2026, 12, 1, 3, 10, tzinfo=UTC),
         ("2026-12-01T03:00:00Z", "2026-12-01T04:00:00Z"),
         ("2026-11-01T04:00:00Z", "2026-12-01T05:00:00Z")),
        # 00:15 on December 1 in Kolkata (+05:30): December, and an hour that begins at :30
        ("Asia/Kolkata", datetime(2026, 11, 30, 18, 45, tzinfo=UTC),
         ("2026-11-30T18:30:00Z", "2026-11-30T19:30:00Z"),
         ("2026-11-30T18:30:00Z", "2026-12-31T18:30:00Z")),
        # the second 01:xx of the night New York's clock went back: the hour after the first
        ("America/New_York", datetime(2026, 11, 1, 6, 20, tzinfo=UTC),
         ("2026-11-01T06:00:00Z", "2026-11-01T07:00:00Z"),
         ("2026-11-01T04:00:00Z", "2026-12-01T05:00:00Z")),
        # Lord Howe's clock goes back half an hour (02:00+11:00 to 01:30+10:30): 01:45 comes
        # twice, the first in the hour from 01:00+11:00, the second in the repeated half hour
        # (its row's hour was 14:00Z to 15:00Z, which does not hold 15:15Z), as spend cuts them
        ("Australia/Lord_Howe", datetime(2026, 4, 4, 14, 45, tzinfo=UTC),
         ("2026-04-04T14:00:00Z", "2026-04-04T15:00:00Z"),
         ("2026-03-31T13:00:00Z", "2026-04-30T13:30:00Z")),
        ("Australia/Lord_Howe", datetime(2026, 4, 4, 15, 15, tzinfo=UTC),
         ("2026-04-04T15:00:00Z", "2026-04-04T15:30:00Z"),
         ("2026-03-31T13:00:00Z", "2026-04-30T13:30:00Z")),
        ("UTC", datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
         ("2026-12-31T23:00:00Z", "2027-01-01T00:00:00Z"),
         ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")),
    ],
)  # fmt: skip
def test_the_periods_of_a_row_are_the_project_s_hour_and_month(
    time_zone: str, occurred_at: datetime, charge: tuple[str, str], billing: tuple[str, str]
) -> None:
    (row,) = rows(_project(time_zone), _event(occurred_at))  # type: ignore[arg-type]
    named = dict(zip(COLUMNS, row, strict=True))
    assert (named["ChargePeriodStart"], named["ChargePeriodEnd"]) == charge
    assert (named["BillingPeriodStart"], named["BillingPeriodEnd"]) == billing
    assert named["BillingPeriodStart"] <= named["ChargePeriodStart"]
    assert named["ChargePeriodEnd"] <= named["BillingPeriodEnd"]
    # the call lies in its charge period
    at = occurred_at.isoformat().replace("+00:00", "Z")
    assert named["ChargePeriodStart"] <= at < named["ChargePeriodEnd"]


def test_one_sku_price_id_is_one_unit_price_and_a_batch_call_says_its_tier() -> None:
    """A version's standard and batch prices of one SKU (or its prices below and above a
    long-context threshold) shared one SkuPriceId: a FinOps tool that builds a price list by it
    met two prices for one id (a finance reviewer's walk)."""
    at = datetime(2026, 12, 1, 12, tzinfo=UTC)
    standard = _event(at)
    batch = {**_event(at), "service_tier": "batch",
             "components": '[["input", 1000, "0.000001", "0.001"]]'}  # fmt: skip
    named = [dict(zip(COLUMNS, rows(_project("UTC"), e)[0], strict=True))  # type: ignore[arg-type]
             for e in (standard, batch)]  # fmt: skip
    assert [n["SkuId"] for n in named] == ["openai/gpt-x/input"] * 2
    assert [n["SkuPriceId"] for n in named] == [
        "openai/gpt-x/input@v7:0.000002",
        "openai/gpt-x/input@v7:0.000001",
    ]
    assert [n["ListUnitPrice"] for n in named] == ["0.000002", "0.000001"]
    assert "(batch tier)" in named[1]["ChargeDescription"]
    assert "tier" not in named[0]["ChargeDescription"]
