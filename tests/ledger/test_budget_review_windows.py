"""A budget's windows equal the sum of their events from the window it counts from on, also when
an event stamped minutes ahead of the clock (ingest takes up to 5 minutes) already lies in the
next window when the budget is made, or when its project's time zone changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from aiserver.ledger import projects
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service
from aiserver.ledger.budgets.periods import window_of
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.ingest import UsageRecorder

from .test_ingest import T0, _row, catalog
from .test_reservations import _project
from .test_reservations import pool as pool  # the fixture

CATALOG = catalog(
    _row(4, "gpt-x", T0, None, input_cost_per_token=Decimal("3e-06"),
         output_cost_per_token=Decimal("6e-06")),
)  # fmt: skip
#: What an event of 1000 input and 333 output tokens of gpt-x costs.
COST = Decimal("0.004998")
BERLIN = "Europe/Berlin"
#: Two minutes before midnight in Berlin (UTC+1), the last day of November.
BEFORE_MIDNIGHT = datetime(2026, 11, 30, 22, 58, tzinfo=UTC)
MIDNIGHT = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)


def event(key: str, when: datetime) -> bytes:
    return msgspec.json.encode({
        "id": key, "model": "gpt-x", "occurred_at": when.isoformat(),
        "usage": {"input_tokens": 1000, "output_tokens": 333},
    })  # fmt: skip


async def record(pool: asyncpg.Pool, access: Access, now: datetime, *raws: bytes) -> None:
    report = await UsageRecorder(LedgerSettings()).record(
        pool, access.project_id or 0, decode_items(raws), catalog=CATALOG, raws=raws, now=now
    )
    assert [r.status for r in report.results] == ["recorded"] * len(raws)


async def windows(pool: asyncpg.Pool, budget_id: int) -> dict[datetime, tuple[Decimal, int]]:
    rows = await pool.fetch(
        "SELECT window_start, sum(committed) AS c, sum(events) AS e FROM budget_windows"
        " WHERE budget_id = $1 GROUP BY 1",
        budget_id,
    )
    return {r["window_start"]: (r["c"], r["e"]) for r in rows}


async def alerted(pool: asyncpg.Pool, budget_id: int) -> list[tuple[datetime, Decimal]]:
    rows = await pool.fetch(
        "SELECT window_start, threshold FROM budget_alerts WHERE budget_id = $1"
        " ORDER BY window_start, threshold",
        budget_id,
    )
    return [(r["window_start"], r["threshold"]) for r in rows]


async def make(pool: asyncpg.Pool, access: Access, now: datetime, **fields: Any) -> int:
    view, _ = await service.create_budget(
        pool, access, **{"name": "b", "limit_usd": Decimal("0.01"), **fields}, now=now
    )
    return view.budget.id


async def test_a_budget_made_before_midnight_counts_an_event_stamped_after_it(
    pool: asyncpg.Pool,
) -> None:
    """At 23:58 an event stamped 00:01 (its clock a little ahead) is recorded; a daily budget
    made at 23:59 counts from today's window on, so tomorrow's window must hold that event, as
    it would had the budget existed first. Before, only today's window was filled from the
    recorded events: tomorrow's started without the event and never counted it."""
    access = await _project(pool, "p", BERLIN)
    await record(pool, access, BEFORE_MIDNIGHT, event("early", BEFORE_MIDNIGHT),
                 event("ahead", MIDNIGHT + timedelta(minutes=1)))  # fmt: skip
    daily = await make(pool, access, BEFORE_MIDNIGHT + timedelta(minutes=1), period="day",
                       thresholds=[Decimal(40)])  # fmt: skip
    today = window_of("day", BERLIN, BEFORE_MIDNIGHT)[0]
    assert await windows(pool, daily) == {today: (COST, 1), MIDNIGHT: (COST, 1)}
    # each window filled alerts for the thresholds it is past already (0.004998 of 0.01)
    assert await alerted(pool, daily) == [(today, Decimal(40)), (MIDNIGHT, Decimal(40))]
    # from then on ingest adds to it, and the threshold alerted does not alert again
    await record(pool, access, MIDNIGHT + timedelta(minutes=2),
                 event("next", MIDNIGHT + timedelta(minutes=2)))  # fmt: skip
    assert (await windows(pool, daily))[MIDNIGHT] == (2 * COST, 2)
    assert len(await alerted(pool, daily)) == 2
    # the month ends at the same midnight: December's window holds the event too
    monthly = await make(pool, access, BEFORE_MIDNIGHT + timedelta(minutes=1), period="month",
                         limit_usd=Decimal(1))  # fmt: skip
    assert await windows(pool, monthly) == {
        window_of("month", BERLIN, BEFORE_MIDNIGHT)[0]: (COST, 1),
        MIDNIGHT: (2 * COST, 2),
    }


async def test_a_zone_change_before_the_new_zones_midnight_counts_an_event_stamped_after_it(
    pool: asyncpg.Pool,
) -> None:
    """The change makes the current window of the new zone from the recorded events, and the
    budget counts from it on: an event already recorded for the new zone's next day must be in
    that day's window. Before, the old zone's windows were dropped and the next window started
    without it."""
    access = await _project(pool, "p", "UTC")
    daily = await make(pool, access, BEFORE_MIDNIGHT - timedelta(hours=1), period="day",
                       limit_usd=Decimal(1))  # fmt: skip
    await record(pool, access, BEFORE_MIDNIGHT, event("early", BEFORE_MIDNIGHT),
                 event("ahead", MIDNIGHT + timedelta(minutes=1)))  # fmt: skip
    # in UTC both events are of 30 November
    assert await windows(pool, daily) == {datetime(2026, 11, 30, tzinfo=UTC): (2 * COST, 2)}
    changed = await projects.change_project(
        pool, access, "p", time_zone=BERLIN, now=BEFORE_MIDNIGHT + timedelta(minutes=1)
    )
    assert changed.time_zone == BERLIN
    today = window_of("day", BERLIN, BEFORE_MIDNIGHT)[0]
    assert await windows(pool, daily) == {today: (COST, 1), MIDNIGHT: (COST, 1)}
