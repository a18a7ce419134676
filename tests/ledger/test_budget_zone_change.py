"""A change of a project's time zone makes its `day`, `week` and `month` budgets' windows again:
they are keyed by the starts of the zone's periods, so the current window in the new zone is
summed from the recorded events in it and the old zone's windows go. A `total` budget's window
does not depend on the zone and stays; a change that is not of the zone leaves every window as
it is; while a reservation holds an amount on a window that would be made again, the change is
refused and nothing changes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest

from aiserver.costs.pricing.exact import ADD
from aiserver.ledger import projects
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service
from aiserver.ledger.budgets.periods import FOREVER, window_of
from aiserver.ledger.budgets.reservations import release, reserve
from aiserver.ledger.errors import BudgetExceeded, ReservationsHeld
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.spend.store import rollups
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.ingest import UsageRecorder

from ..support.waits import waiting_for_a_lock
from .test_ingest import T0, _row, catalog
from .test_reservations import _project
from .test_reservations import pool as pool  # the fixture

#: The last day of the month in UTC; already 1 January 2027 in Kiritimati (UTC+14).
NOW = datetime(2026, 12, 31, 12, tzinfo=UTC)
KIRITIMATI = "Pacific/Kiritimati"
#: Kiritimati's January starts here (midnight there): the month's window in the new zone.
NEW_MONTH = datetime(2026, 12, 31, 10, tzinfo=UTC)
CATALOG = catalog(
    _row(4, "gpt-x", T0, None, input_cost_per_token=Decimal("3e-06"),
         output_cost_per_token=Decimal("6e-06")),
)  # fmt: skip
#: What an event of 1000 input and 333 output tokens of gpt-x costs.
COST = Decimal("0.004998")


@pytest.fixture
async def access(pool: asyncpg.Pool) -> Access:
    return await _project(pool, "p", "UTC")


async def budget(pool: asyncpg.Pool, access: Access, **fields: Any) -> int:
    view, _ = await service.create_budget(
        pool, access,
        **{"name": "b", "limit_usd": Decimal("0.02"), "period": "month", "hard": True,
           **fields},
        now=NOW,
    )  # fmt: skip
    return view.budget.id


def event(key: str, when: datetime) -> bytes:
    return msgspec.json.encode({
        "id": key, "model": "gpt-x", "occurred_at": when.isoformat(),
        "usage": {"input_tokens": 1000, "output_tokens": 333},
    })  # fmt: skip


async def record(pool: asyncpg.Pool, access: Access, *raws: bytes) -> None:
    report = await UsageRecorder(LedgerSettings()).record(
        pool, access.project_id or 0, decode_items(raws), catalog=CATALOG, raws=raws, now=NOW
    )
    assert [r.status for r in report.results] == ["recorded"] * len(raws)


async def rows(pool: asyncpg.Pool, budget_id: int | None = None) -> list[dict[str, Any]]:
    """Every row of `budget_windows` (of one budget), as it is."""
    found = await pool.fetch(
        "SELECT * FROM budget_windows WHERE $1::bigint IS NULL OR budget_id = $1"
        " ORDER BY budget_id, window_start, stripe",
        budget_id,
    )
    return [dict(r) for r in found]


async def zone(pool: asyncpg.Pool, access: Access) -> str:
    found: str = await pool.fetchval(
        "SELECT time_zone FROM projects WHERE id = $1", access.project_id
    )
    return found


async def events_cost(pool: asyncpg.Pool, start: datetime, end: datetime) -> Decimal:
    """The cost of the recorded events in [start, end), summed by PostgreSQL."""
    total: Decimal = await pool.fetchval(
        "SELECT sum(total_cost) FROM usage_events WHERE occurred_at >= $1 AND occurred_at < $2",
        start,
        end,
    )
    return total


async def change_zone(pool: asyncpg.Pool, access: Access, to: str = KIRITIMATI) -> None:
    changed = await projects.change_project(pool, access, "p", time_zone=to, now=NOW)
    assert changed.time_zone == to


async def test_the_month_keeps_what_its_window_spent_in_the_new_zone_and_a_hard_limit_holds(
    pool: asyncpg.Pool, access: Access
) -> None:
    """The reproduction: a UTC project with a hard monthly budget of 0.02 spent 0.019992 this
    month; after the change to Kiritimati its month (from 10:00 UTC today) holds the two events
    since then, and the ones before are outside it."""
    monthly = await budget(pool, access)
    daily = await budget(pool, access, name="d", period="day", hard=False, limit_usd=Decimal(1))
    await record(
        pool, access,
        event("early", datetime(2026, 12, 2, 8, tzinfo=UTC)),  # December in both zones
        event("eve", NEW_MONTH - timedelta(seconds=1)),  # 23:59:59 on 31 December there
        event("midnight", NEW_MONTH),  # the first instant of January there
        event("late", datetime(2026, 12, 31, 11, 30, tzinfo=UTC)),
    )  # fmt: skip
    before = {v.budget.id: v.window for v in await service.list_budgets(pool, access, now=NOW)}
    assert before[monthly].committed == ADD(ADD(COST, COST), ADD(COST, COST))  # 0.019992
    assert before[daily].committed == ADD(ADD(COST, COST), COST)  # eve, midnight, late
    alerts = await pool.fetchval("SELECT count(*) FROM budget_alerts")
    assert alerts == 2  # 50% and 80% of the monthly budget

    await change_zone(pool, access)

    views = {v.budget.id: v.window for v in await service.list_budgets(pool, access, now=NOW)}
    month, day = views[monthly], views[daily]
    assert (month.start, month.end) == (NEW_MONTH, datetime(2027, 1, 31, 10, tzinfo=UTC))
    assert (day.start, day.end) == (NEW_MONTH, datetime(2027, 1, 1, 10, tzinfo=UTC))
    in_new_window = ADD(COST, COST)  # midnight and late; early and eve are outside
    assert month.committed == in_new_window == await events_cost(pool, month.start, month.end)
    assert (month.events, month.reserved) == (2, Decimal(0))
    assert month.remaining == Decimal("0.010004")
    assert day.committed == in_new_window
    assert (await service.show_budget(pool, access, monthly, now=NOW)).window == month
    # the old zone's windows went; each budget has its current window in the new zone only
    assert {(r["budget_id"], r["window_start"]) for r in await rows(pool)} == {
        (monthly, NEW_MONTH),
        (daily, NEW_MONTH),
    }
    assert await pool.fetchval("SELECT count(*) FROM budget_alerts") == alerts  # none again

    # the hard budget refuses what would pass its limit, and holds what fits, to the digit
    with pytest.raises(BudgetExceeded) as refused:
        await reserve(pool, access, amount=Decimal("0.010005"), now=NOW)
    assert refused.value.remaining == "0.010004"
    await reserve(pool, access, amount=Decimal("0.010004"), now=NOW)
    with pytest.raises(BudgetExceeded):
        await reserve(pool, access, amount=Decimal("0.000001"), now=NOW)

    # usage recorded after the change counts in the new zone's window
    await record(pool, access, event("after", datetime(2026, 12, 31, 11, 45, tzinfo=UTC)))
    after = await service.show_budget(pool, access, daily, now=NOW)
    assert after.window.committed == ADD(in_new_window, COST)


async def test_a_zone_change_is_refused_while_a_reservation_is_held_and_changes_nothing(
    pool: asyncpg.Pool, access: Access
) -> None:
    monthly = await budget(pool, access)
    await record(pool, access, event("early", datetime(2026, 12, 2, 8, tzinfo=UTC)))
    held = await reserve(pool, access, amount=Decimal("0.001"), now=NOW)
    windows = await rows(pool)
    daily = await pool.fetch("SELECT * FROM usage_rollups_daily ORDER BY 1, 2")

    with pytest.raises(ReservationsHeld) as refused:
        await change_zone(pool, access)
    assert refused.value.status == 409
    assert refused.value.problem()["type"] == "urn:aiserver:problem:reservations-held"
    assert "release them, or wait for them to expire" in str(refused.value)
    assert await zone(pool, access) == "UTC"
    assert await rows(pool) == windows
    assert await pool.fetch("SELECT * FROM usage_rollups_daily ORDER BY 1, 2") == daily
    view = await service.show_budget(pool, access, monthly, now=NOW)
    assert (view.window.committed, view.window.reserved) == (COST, Decimal("0.001"))

    # released, the reservation holds nothing: the change goes through
    await release(pool, access, str(held.id))
    await change_zone(pool, access)
    view = await service.show_budget(pool, access, monthly, now=NOW)
    assert (view.window.start, view.window.committed, view.window.reserved) == (
        NEW_MONTH, Decimal(0), Decimal(0),
    )  # fmt: skip


async def test_a_change_of_the_name_or_to_the_same_zone_leaves_every_window_as_it_is(
    pool: asyncpg.Pool, access: Access
) -> None:
    await budget(pool, access)
    await budget(pool, access, name="d", period="day", hard=False)
    await record(
        pool, access,
        event("early", datetime(2026, 12, 2, 8, tzinfo=UTC)),
        event("late", datetime(2026, 12, 31, 11, 30, tzinfo=UTC)),
    )  # fmt: skip
    await reserve(pool, access, amount=Decimal("0.001"), now=NOW)  # held: no zone change
    windows = await rows(pool)
    # a month and a day: the day budget counts from the day it was made, the 31st
    assert len({(r["budget_id"], r["window_start"]) for r in windows}) == 2

    renamed = await projects.change_project(pool, access, "p", name="Renamed", now=NOW)
    assert (renamed.name, renamed.time_zone) == ("Renamed", "UTC")
    same = await projects.change_project(pool, access, "p", time_zone="UTC", now=NOW)
    assert same.time_zone == "UTC"
    assert await rows(pool) == windows


async def test_a_total_budgets_window_stays_as_it_is_and_its_reservations_do_not_refuse(
    pool: asyncpg.Pool, access: Access
) -> None:
    total = await budget(pool, access, name="t", period="total", limit_usd=Decimal(1))
    await record(pool, access, event("early", datetime(2026, 12, 2, 8, tzinfo=UTC)))
    await reserve(pool, access, amount=Decimal("0.25"), now=NOW)  # held on the total only
    windows = await rows(pool, total)
    assert {r["window_start"] for r in windows} == {FOREVER}

    await change_zone(pool, access)

    assert await rows(pool, total) == windows
    view = await service.show_budget(pool, access, total, now=NOW)
    assert (view.window.committed, view.window.reserved) == (COST, Decimal("0.25"))


async def test_a_week_window_is_made_in_the_new_zone_from_the_events_in_it(
    pool: asyncpg.Pool, access: Access
) -> None:
    """Across the week boundary too: Kiritimati's week of Monday 28 December starts at 10:00
    UTC on Sunday the 27th, which is still the week before in UTC."""
    weekly = await budget(pool, access, name="w", period="week", hard=False)
    await record(
        pool, access,
        event("sunday", datetime(2026, 12, 27, 9, tzinfo=UTC)),  # the week before, both zones
        event("monday-there", datetime(2026, 12, 27, 11, tzinfo=UTC)),  # still Sunday in UTC
        event("wednesday", datetime(2026, 12, 30, 8, tzinfo=UTC)),
    )  # fmt: skip
    before = await service.show_budget(pool, access, weekly, now=NOW)
    assert before.window.start == datetime(2026, 12, 28, tzinfo=UTC)
    assert before.window.committed == COST  # wednesday only

    await change_zone(pool, access)

    after = await service.show_budget(pool, access, weekly, now=NOW)
    start, end = window_of("week", KIRITIMATI, NOW)
    assert (after.window.start, after.window.end) == (start, end)
    assert start == datetime(2026, 12, 27, 10, tzinfo=UTC)
    assert after.window.committed == ADD(COST, COST) == await events_cost(pool, start, end)


async def test_a_change_that_deadlocks_with_a_rollup_rebuild_is_made_again(
    pool: asyncpg.Pool, access: Access, migrated_database_url: str
) -> None:
    """A rebuild takes the rollup lock and then the project's row; the change takes them the
    other way round. PostgreSQL breaks the deadlock by failing the change (the rebuild here
    waits longer before it looks for one), which then runs again and succeeds."""
    monthly = await budget(pool, access)
    await record(pool, access, event("late", datetime(2026, 12, 31, 11, 30, tzinfo=UTC)))
    rebuilding = await asyncpg.connect(migrated_database_url)
    try:
        await rebuilding.execute("SET deadlock_timeout = '20s'")
        async with rebuilding.transaction():  # what rebuild_rollups does first, step by step
            await rollups.lock_project(rebuilding, access.project_id or 0)
            changing = asyncio.create_task(change_zone(pool, access))
            await waiting_for_a_lock(pool, "SELECT pg_advisory_xact_lock(")
            await rollups.locked_rollup_tags(rebuilding, access.project_id or 0)
        await asyncio.wait_for(changing, 30)
    finally:
        await rebuilding.close()
    assert await zone(pool, access) == KIRITIMATI
    view = await service.show_budget(pool, access, monthly, now=NOW)
    assert (view.window.start, view.window.committed) == (NEW_MONTH, COST)


async def test_a_threshold_alerted_before_the_zone_change_does_not_alert_again_in_the_new_window(
    pool: asyncpg.Pool, access: Access
) -> None:
    """The new zone's window has another start, so the alert of the old one did not keep a
    limit or thresholds changed afterwards from alerting the same threshold again (a helper's
    review: the receiver got two 50% webhooks for the same spend, 0.1 s apart). A threshold
    that alerted in a window overlapping the new one is not alerted again."""
    daily = await budget(pool, access, name="d", period="day", hard=False,
                         limit_usd=Decimal("0.008"), thresholds=[Decimal(50)])  # fmt: skip
    await record(pool, access, event("spent", NOW - timedelta(hours=1)))  # 0.004998: 62%
    alerted = "SELECT threshold, window_start FROM budget_alerts WHERE budget_id = $1"
    (first,) = await pool.fetch(alerted, daily)
    assert first["threshold"] == 50

    await change_zone(pool, access)  # the day in Kiritimati began at 10:00 UTC: "spent" is in it
    view = await service.show_budget(pool, access, daily, now=NOW)
    assert view.window.committed == COST
    assert view.window.start != first["window_start"]
    # a change of thresholds (or of the limit) alerts what the window has reached, but 50%
    await service.change_budget(
        pool, access, daily, {"thresholds": [Decimal(50), Decimal(500)]}, now=NOW
    )
    await service.change_budget(pool, access, daily, {"limit_usd": Decimal("0.007")}, now=NOW)
    assert [r["threshold"] for r in await pool.fetch(alerted, daily)] == [50]
    # a threshold the old window never reached alerts as ever
    await service.change_budget(
        pool, access, daily, {"thresholds": [Decimal(50), Decimal(60)]}, now=NOW
    )
    assert sorted(r["threshold"] for r in await pool.fetch(alerted, daily)) == [50, 60]
