"""Ingest commits each recorded event's exact cost to the windows of the budgets it matches, in
its own transaction: a window always equals the sum over its events, whatever the batching,
retries, time zones or budgets created while usage streams in."""

from __future__ import annotations

import asyncio
import importlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest

from aiserver.core_db.database import database, require_pool
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service
from aiserver.ledger.budgets import store as budget_store
from aiserver.ledger.budgets.commits import BudgetScope, Spend, WindowSum, window_sums
from aiserver.ledger.budgets.periods import PERIODS, window_of
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.ingest import UsageRecorder

from ..conftest import Settings
from .test_ingest import T0, _row, catalog

NOW = datetime.now(UTC).replace(microsecond=0)
ZONE = "Europe/Berlin"
CATALOG = catalog(
    _row(4, "gpt-x", T0, None, input_cost_per_token=Decimal("3e-06"),
         output_cost_per_token=Decimal("6e-06")),
)  # fmt: skip


@pytest.fixture
async def project(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, Access]]:
    async with database(settings.core):
        pool = require_pool()
        project_id = await pool.fetchval(
            "INSERT INTO projects (slug, name, time_zone) VALUES ('p', 'P', $1) RETURNING id", ZONE
        )
        yield pool, Access(project_id, "p", frozenset({"ingest", "read", "admin"}))


async def budget(pool: asyncpg.Pool, access: Access, **fields: Any) -> int:
    """A budget made at `NOW` unless told otherwise: it counts from NOW's window, which the
    tests' events fall in even when the run crosses midnight after the module was imported."""
    view, _ = await service.create_budget(
        pool, access,
        **{"name": "b", "limit_usd": Decimal(100), "period": "day", "now": NOW, **fields},
    )  # fmt: skip
    return view.budget.id


def event(key: str, when: datetime, *, model: str = "gpt-x", tokens: int = 1000,
          **tags: str) -> bytes:  # fmt: skip
    body = {
        "id": key, "model": model, "occurred_at": when.isoformat(), "tags": tags,
        "usage": {"input_tokens": tokens, "output_tokens": tokens // 3},
    }  # fmt: skip
    return msgspec.json.encode(body)


async def record(pool: asyncpg.Pool, access: Access, *raws: bytes) -> list[str]:
    report = await UsageRecorder(LedgerSettings()).record(
        pool, access.project_id or 0, decode_items(raws), catalog=CATALOG, raws=raws
    )
    return [r.status for r in report.results]


async def windows(pool: asyncpg.Pool) -> dict[tuple[int, datetime], tuple[Decimal, int, int]]:
    rows = await pool.fetch(
        "SELECT budget_id, window_start, sum(committed) AS c, sum(events) AS e,"
        " sum(unpriced_events) AS u FROM budget_windows GROUP BY 1, 2"
    )
    return {(r["budget_id"], r["window_start"]): (r["c"], r["e"], r["u"]) for r in rows}


async def brute_force(pool: asyncpg.Pool) -> dict[tuple[int, datetime], tuple[Decimal, int, int]]:
    """Every budget's windows summed from the raw events, by the rules in plain Python."""
    budgets = await pool.fetch(
        "SELECT id, tags::text AS tags, model, period, counts_from FROM budgets"
    )
    events = await pool.fetch(
        "SELECT occurred_at, tags::text AS tags, model, matched_model, total_cost FROM usage_events"
    )
    sums: dict[tuple[int, datetime], list[Any]] = defaultdict(lambda: [Decimal(0), 0, 0])
    for b in budgets:
        wanted = msgspec.json.decode(b["tags"])
        for e in events:
            tags = msgspec.json.decode(e["tags"])
            if any(tags.get(k) != v for k, v in wanted.items()):
                continue
            if b["model"] is not None and b["model"] not in (e["model"], e["matched_model"]):
                continue
            start, _ = window_of(b["period"], ZONE, e["occurred_at"])
            if start < b["counts_from"]:
                continue  # a window from before the budget
            found = sums[b["id"], start]
            found[0] += e["total_cost"] or 0
            found[1] += 1
            found[2] += e["total_cost"] is None
    return {k: (v[0], v[1], v[2]) for k, v in sums.items()}


async def test_each_event_adds_its_exact_cost_to_every_budget_it_matches_once(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    pool, access = project
    made = NOW - timedelta(days=3)  # the budgets count from the window that held then
    whole = await budget(pool, access, period="month", now=made)
    search = await budget(pool, access, tags={"team": "search"}, now=made)
    search_x = await budget(pool, access, tags={"team": "search", "env": "prod"}, model="gpt-x",
                            now=made)  # fmt: skip
    unknown = await budget(pool, access, model="mystery-1", period="total", now=made)
    earlier = NOW - timedelta(days=2)
    assert await record(
        pool, access,
        event("a", NOW, team="search", env="prod"),
        event("b", NOW, team="search"),
        event("c", NOW, team="ads", env="prod"),
        event("d", NOW, model="mystery-1", team="search", env="prod"),  # unpriced
        event("e", earlier, team="search", env="prod"),  # counts in the window of its own day
    ) == ["recorded"] * 5  # fmt: skip
    # one event alone takes the one-statement path
    assert await record(pool, access, event("f", NOW, tokens=7, team="search")) == ["recorded"]
    # a retry counts nothing again
    assert await record(pool, access, event("a", NOW, team="search", env="prod"),
                        event("f", NOW, tokens=7, team="search")) == ["duplicate"] * 2  # fmt: skip

    got = await windows(pool)
    assert got == await brute_force(pool)
    today = window_of("day", ZONE, NOW)[0]
    # 1000 in * 3e-06 + 333 out * 6e-06 = 0.004998; 7 in + 2 out = 0.000033
    assert got[search, today] == (Decimal("0.004998") * 2 + Decimal("0.000033"), 4, 1)
    assert got[search_x, today] == (Decimal("0.004998"), 1, 0)  # "d" is another model
    assert got[unknown, window_of("total", ZONE, NOW)[0]] == (Decimal(0), 1, 1)
    assert got[search, window_of("day", ZONE, earlier)[0]] == (Decimal("0.004998"), 1, 0)
    assert sum(v[1] for k, v in got.items() if k[0] == whole) == 6


async def test_a_day_is_the_projects_day_across_a_daylight_saving_change(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    pool, access = project
    daily = await budget(pool, access, now=datetime(2026, 10, 20, tzinfo=UTC))
    # Berlin's clocks went back on 2026-10-25: that day ran from 22:00 UTC on the 24th to
    # 23:00 UTC on the 25th (25 hours)
    instants = ["2026-10-24T21:59:59+00:00", "2026-10-24T22:00:00+00:00",
                "2026-10-25T22:59:59+00:00", "2026-10-25T23:00:00+00:00"]  # fmt: skip
    await record(
        pool, access, *(event(f"k{i}", datetime.fromisoformat(t)) for i, t in enumerate(instants))
    )
    got = await windows(pool)
    assert got == await brute_force(pool)
    starts = sorted(start for _, start in got)
    assert [s.isoformat() for s in starts] == [
        "2026-10-23T22:00:00+00:00", "2026-10-24T22:00:00+00:00", "2026-10-25T23:00:00+00:00",
    ]  # fmt: skip
    assert [got[daily, s][1] for s in starts] == [1, 2, 1]


async def test_a_new_budget_counts_what_its_window_spent_before_it_was_set(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    pool, access = project
    await record(pool, access, event("a", NOW, team="search"), event("b", NOW, team="ads"),
                 event("c", NOW - timedelta(days=40), team="search"))  # fmt: skip
    search = await budget(pool, access, tags={"team": "search"})
    view = await service.show_budget(pool, access, search, now=NOW)
    assert (view.window.committed, view.window.events) == (Decimal("0.004998"), 1)
    await record(pool, access, event("d", NOW, team="search"))
    view = await service.show_budget(pool, access, search, now=NOW)
    assert (view.window.committed, view.window.events) == (Decimal("0.009996"), 2)


async def test_budgets_created_and_deleted_while_usage_streams_in_count_every_event_once(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    pool, access = project
    rng = random.Random(7)
    teams = ("search", "ads", "core")
    # A budget created mid-period counts what its current window spent so far, and earlier
    # windows not at all; so the events stay within today (in the project's zone), up to 10
    # hours back, as the budgets' one window (at midnight, from NOW back to midnight only).
    today = int((NOW - window_of("day", ZONE, NOW)[0]).total_seconds() // 60)
    span = max(1, min(600, today))

    async def stream(worker: int) -> None:
        for batch in range(6):
            raws = [
                event(f"w{worker}-{batch}-{i}", NOW - timedelta(minutes=rng.randrange(span)),
                      tokens=rng.randrange(1, 5000), team=rng.choice(teams))
                for i in range(rng.randrange(1, 40))
            ]  # fmt: skip
            assert set(await record(pool, access, *raws)) == {"recorded"}

    async def manage() -> None:
        doomed = await budget(pool, access, tags={"team": "ads"})
        for team in teams:
            await asyncio.sleep(0.01)
            await budget(pool, access, tags={"team": team})
        await service.delete_budget(pool, access, doomed)
        await budget(pool, access, period="total")

    await asyncio.gather(*(stream(w) for w in range(4)), manage())
    assert await windows(pool) == await brute_force(pool)
    assert await pool.fetchval("SELECT count(*) FROM budgets") == 4


async def alerts(pool: asyncpg.Pool) -> list[tuple[int, str, Decimal, Decimal, str]]:
    rows = await pool.fetch(
        "SELECT budget_id, window_start, threshold, committed, state FROM budget_alerts"
        " ORDER BY budget_id, window_start, threshold"
    )
    return [
        (r["budget_id"], r["window_start"].isoformat(), r["threshold"], r["committed"], r["state"])
        for r in rows
    ]


async def test_each_threshold_a_window_crosses_raises_one_alert(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    pool, access = project
    # 0.004998 per event: 50% of 0.02 is 0.01 (crossed by the 3rd event), 80% is 0.016 (4th),
    # 100% is 0.02 (5th), 150% is 0.03 (7th)
    limited = await budget(
        pool, access, limit_usd=Decimal("0.02"), thresholds=[Decimal(150), Decimal(50),
                                                               Decimal(80), Decimal(100)],
        now=NOW - timedelta(days=1),  # so that yesterday's window counts
    )  # fmt: skip
    today = window_of("day", ZONE, NOW)[0].isoformat()
    await record(pool, access, event("a", NOW), event("b", NOW))
    assert await alerts(pool) == []
    await record(pool, access, event("c", NOW), event("d", NOW))  # past 50% and 80% at once
    assert await alerts(pool) == [
        (limited, today, Decimal(50), Decimal("0.019992"), "no_webhook"),
        (limited, today, Decimal(80), Decimal("0.019992"), "no_webhook"),
    ]
    for key in "efgh":
        await record(pool, access, event(key, NOW))
    assert [a[2] for a in await alerts(pool)] == [50, 80, 100, 150]
    # another day is another window: its own alerts
    await record(pool, access, *(event(f"y{i}", NOW - timedelta(days=1)) for i in range(3)))
    yesterday = window_of("day", ZONE, NOW - timedelta(days=1))[0].isoformat()
    assert [a[2] for a in await alerts(pool) if a[1] == yesterday] == [Decimal(50)]


async def test_racing_past_a_threshold_raises_it_once(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    pool, access = project
    limited = await budget(pool, access, limit_usd=Decimal("0.05"), thresholds=[Decimal(50)])
    # 30 events of 0.004998 from 10 writers at once: the 6th event in commit order crosses 0.025
    await asyncio.gather(
        *(record(pool, access, *(event(f"w{w}-{i}", NOW) for i in range(3))) for w in range(5)),
        *(record(pool, access, event(f"s{w}", NOW)) for w in range(15)),
    )
    got = await alerts(pool)
    assert [(a[0], a[2], a[4]) for a in got] == [(limited, Decimal(50), "no_webhook")]
    # the alert holds the committed cost of the transaction that crossed, just past the level
    assert Decimal("0.025") <= got[0][3] < Decimal("0.025") + 3 * Decimal("0.004998")


async def reprice_with_mystery_priced(pool: asyncpg.Pool, access: Access) -> None:
    """Reprice the project with a catalog that prices mystery-1 (and gpt-x anew)."""
    from aiserver.ledger.repricing.execution import execute_run
    from aiserver.ledger.repricing.runs import RepriceRequest, request_reprice

    priced = catalog(
        _row(4, "gpt-x", T0, None, input_cost_per_token=Decimal("3e-06"),
             output_cost_per_token=Decimal("6e-06")),
        _row(5, "mystery-1", T0, None, input_cost_per_token=Decimal("2e-06"),
             output_cost_per_token=Decimal("6e-06")),
    )  # fmt: skip
    run = await request_reprice(pool, access, RepriceRequest(project="p", dry_run=False))
    await execute_run(pool, run.id, priced)


async def test_a_reprice_moves_costs_in_budget_windows_and_raises_what_it_crosses(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    pool, access = project
    capped = await budget(pool, access, limit_usd=Decimal("0.01"), thresholds=[Decimal(100)])
    # two calls of a model the catalog does not know yet: kept unpriced, not $0
    await record(pool, access, event("m1", NOW, model="mystery-1"),
                 event("m2", NOW, model="mystery-1"), event("x", NOW))  # fmt: skip
    today = window_of("day", ZONE, NOW)[0]
    assert (await windows(pool))[capped, today] == (Decimal("0.004998"), 3, 2)

    await reprice_with_mystery_priced(pool, access)
    # each mystery-1 call: 1000 * 2e-06 + 333 * 6e-06 = 0.003998
    got = await windows(pool)
    assert got[capped, today] == (Decimal("0.004998") + 2 * Decimal("0.003998"), 3, 0)
    assert got == await brute_force(pool)
    assert [(a[0], a[2], a[4]) for a in await alerts(pool)] == [
        (capped, Decimal(100), "no_webhook")
    ]


async def test_a_reprice_that_brings_an_event_into_a_model_budget_counts_it_there(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    """An event reported as openai/mystery-1 before the catalog knew the model matched no
    budget of mystery-1 (no model was matched); the reprice names its model mystery-1, and the
    budget's window, which had counted no event yet, takes it. Before, a window without a row
    was never corrected: the cost was lost, unless another event of the window had made the
    row."""
    pool, access = project
    scoped = await budget(pool, access, model="mystery-1", limit_usd=Decimal("0.01"),
                          thresholds=[Decimal(10)])  # fmt: skip
    assert await record(pool, access, event("m1", NOW, model="openai/mystery-1")) == ["recorded"]
    assert await windows(pool) == await brute_force(pool) == {}

    await reprice_with_mystery_priced(pool, access)
    today = window_of("day", ZONE, NOW)[0]
    assert await windows(pool) == {(scoped, today): (Decimal("0.003998"), 1, 0)}
    assert await windows(pool) == await brute_force(pool)
    assert [(a[0], a[2]) for a in await alerts(pool)] == [(scoped, Decimal(10))]


async def test_a_reprice_leaves_alone_the_windows_that_never_counted_its_events(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    """A budget made today counts today's window, not the days before it: pricing an event of
    three days ago that was unpriced must not write that day's window (before, a window row
    appeared there with 0.003998 committed, 0 events and -1 unpriced events; a price cut would
    have left a negative total, and a large change could alert for a day long gone)."""
    pool, access = project
    before = NOW - timedelta(days=3)
    await record(pool, access, event("old", before, model="mystery-1"), event("x", before))
    daily = await budget(pool, access, limit_usd=Decimal("0.01"), thresholds=[Decimal(1)])
    await record(pool, access, event("now", NOW, model="mystery-1"))
    today = window_of("day", ZONE, NOW)[0]
    assert await windows(pool) == {(daily, today): (Decimal(0), 1, 1)}

    await reprice_with_mystery_priced(pool, access)
    assert await pool.fetchval("SELECT count(*) FROM usage_events WHERE status = 'unpriced'") == 0
    # today's window takes the event it counted, priced; the day of three days ago stays unwritten
    assert await windows(pool) == {(daily, today): (Decimal("0.003998"), 1, 0)}
    assert [(a[0], a[1]) for a in await alerts(pool)] == [(daily, today.isoformat())]


async def test_a_late_event_of_a_window_from_before_the_budget_counts_for_none_of_its_windows(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    """A budget counts from the window it was made in. Before, a late event of an older window
    opened that window with itself alone, and a reprice of an event recorded there before the
    budget then moved a cost the window had never counted (a price cut: a negative total)."""
    pool, access = project
    before = NOW - timedelta(days=3)
    monthly = await budget(pool, access, period="month", now=before - timedelta(days=40))
    await record(pool, access, event("old", before, model="mystery-1"))
    daily = await budget(pool, access, limit_usd=Decimal("0.01"), thresholds=[Decimal(1)])
    counts_from = await pool.fetchval("SELECT counts_from FROM budgets WHERE id = $1", daily)
    today = window_of("day", ZONE, NOW)[0]
    assert counts_from == today
    # late events of three days ago, the second a backfill on its own
    assert await record(pool, access, event("late", before), event("now", NOW)) == ["recorded"] * 2
    assert await record(pool, access, event("later", before, tokens=7)) == ["recorded"]
    got = await windows(pool)
    assert {k for k in got if k[0] == daily} == {(daily, today)}
    assert got[daily, today] == (Decimal("0.004998"), 1, 0)
    assert got == await brute_force(pool)  # the month budget, made long before, counts them all
    assert sum(v[1] for k, v in got.items() if k[0] == monthly) == 4

    await reprice_with_mystery_priced(pool, access)
    got = await windows(pool)
    assert {k for k in got if k[0] == daily} == {(daily, today)}
    assert got == await brute_force(pool)
    assert [(a[0], a[1]) for a in await alerts(pool)] == [(daily, today.isoformat())]


async def test_the_migration_sets_each_existing_budgets_counts_from_to_its_creation_window(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    """The upgrade's statement (`ledger_window_start`, in SQL) draws the window that held each
    budget's `created_at` as `window_of` does: every period, zones east and west of UTC and off
    the hour, daylight-saving days, a Sunday night before a Monday, a local midnight that
    happens twice (Havana, the Azores: clocks back from 01:00 to 00:00; PostgreSQL alone takes
    the second) and one that does not happen (Santiago: clocks forward from 00:00), a zone
    name PostgreSQL reads otherwise (CET) and a clock that went back 3 hours (Casey)."""
    pool, _ = project
    upgrade = importlib.import_module(
        "aiserver.ledger.piccolo_migrations.ledger_2026_12_05t05_00_00_000000"
    )
    instants = [
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC), datetime(2026, 3, 8, 6, 59, tzinfo=UTC),
        datetime(2026, 12, 6, 23, 15, tzinfo=UTC), datetime(2026, 12, 31, 20, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 0, tzinfo=UTC), datetime(2026, 11, 1, 12, tzinfo=UTC),
        datetime(2026, 10, 25, 12, tzinfo=UTC), datetime(2026, 9, 6, 12, tzinfo=UTC),
        datetime(2026, 7, 3, 10, tzinfo=UTC), datetime(2023, 3, 9, 12, tzinfo=UTC),
    ]  # fmt: skip
    # CET: a name PostgreSQL alone reads without summer time (projects made before it was
    # refused); Antarctica/Casey went back 3 hours at midnight on 9 March 2023
    zones = ("Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Kiritimati", "UTC",
             "America/Havana", "Atlantic/Azores", "America/Santiago", "CET",
             "Antarctica/Casey")  # fmt: skip
    # the days this is about: each zone's midnight there is ambiguous or missing
    assert window_of("month", "America/Havana", instants[5])[0] == datetime(
        2026, 11, 1, 4, tzinfo=UTC
    )
    made = []
    for n, zone in enumerate(zones):
        slug = f"z{n}"
        project_id = await pool.fetchval(
            "INSERT INTO projects (slug, name, time_zone) VALUES ($1, $1, $2) RETURNING id",
            slug, zone,
        )  # fmt: skip
        access = Access(project_id, slug, frozenset({"admin"}))
        for period in PERIODS:
            for at in instants:
                made.append((await budget(pool, access, period=period, now=NOW), zone, period, at))
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE budgets ALTER COLUMN counts_from DROP NOT NULL")
        for budget_id, _, _, at in made:
            await conn.execute(
                "UPDATE budgets SET created_at = $2, counts_from = NULL WHERE id = $1",
                budget_id, at,
            )  # fmt: skip
        await conn.execute(upgrade.STATEMENTS[2])
        got = dict(await conn.fetch("SELECT id, counts_from FROM budgets"))
        await conn.execute("ALTER TABLE budgets ALTER COLUMN counts_from SET NOT NULL")
    assert len(made) == len(zones) * len(PERIODS) * len(instants)
    for budget_id, zone, period, at in made:
        assert got[budget_id] == window_of(period, zone, at)[0], (zone, period, at)


async def test_a_budget_the_release_before_inserts_counts_from_the_window_it_was_made_in(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    """While the upgrade rolls out, API replicas of the release before keep creating budgets
    with no `counts_from`: the trigger fills it from `created_at` in the project's zone, so the
    insert succeeds and ingest counts the budget from its window."""
    pool, access = project
    made = datetime(2026, 11, 1, 12, tzinfo=UTC)
    budget_id = await pool.fetchval(
        "INSERT INTO budgets (project_id, name, period, limit_usd, created_at)"
        " VALUES ($1, 'old', 'week', 1, $2) RETURNING id",
        access.project_id, made,
    )  # fmt: skip
    counts_from = await pool.fetchval("SELECT counts_from FROM budgets WHERE id = $1", budget_id)
    assert counts_from == window_of("week", ZONE, made)[0]
    # what the release before reads budgets with is still there, as it was
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM ledger_ingest_start($1, 0, 'x')", access.project_id
        )
        == 1
    )


async def test_a_limit_lowered_past_the_windows_spend_alerts_for_each_threshold_now_reached(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    """Before, a limit lowered below what the window had committed raised no alert: the window's
    cost did not move, so no ingest crossed anything, and the 100% alert never came that day."""
    pool, access = project
    capped = await budget(pool, access, limit_usd=Decimal("0.02"))  # thresholds 50, 80, 100
    today = window_of("day", ZONE, NOW)[0].isoformat()
    await record(pool, access, event("a", NOW), event("b", NOW), event("c", NOW))
    spent = Decimal("0.014994")  # 3 x 0.004998: 75% of 0.02
    assert await alerts(pool) == [(capped, today, Decimal(50), spent, "no_webhook")]

    # raised first: 0.014994 is 37.5% of 0.04, nothing more is reached (and 50% alerted already)
    await service.change_budget(pool, access, capped, {"limit_usd": Decimal("0.04")}, now=NOW)
    assert len(await alerts(pool)) == 1
    # lowered to 0.015: 80% (0.012) reached, 100% (0.015) not yet
    await service.change_budget(pool, access, capped, {"limit_usd": Decimal("0.015")}, now=NOW)
    assert await alerts(pool) == [
        (capped, today, Decimal(50), spent, "no_webhook"),
        (capped, today, Decimal(80), spent, "no_webhook"),
    ]
    # lowered to 0.01: 100% reached; the alert holds the limit it was reached under
    view, _ = await service.change_budget(
        pool, access, capped, {"limit_usd": Decimal("0.01")}, now=NOW
    )
    assert view.window.used_percent == Decimal("149.94")
    assert [a[2] for a in await alerts(pool)] == [50, 80, 100]
    assert await pool.fetchval(
        "SELECT limit_usd FROM budget_alerts WHERE budget_id = $1 AND threshold = 100", capped
    ) == Decimal("0.01")
    # a threshold added below the window's share alerts; one above it does not (yet)
    levels = [Decimal(50), Decimal(140), Decimal(200)]
    await service.change_budget(pool, access, capped, {"thresholds": levels}, now=NOW)
    assert [a[2] for a in await alerts(pool)] == [50, 80, 100, 140]
    # a name change reads no window and raises nothing
    await service.change_budget(pool, access, capped, {"name": "renamed"}, now=NOW)
    assert len(await alerts(pool)) == 4
    # the next event crosses 200% (0.02) as ingest always does
    await record(pool, access, event("d", NOW), event("e", NOW))
    assert [a[2] for a in await alerts(pool)] == [50, 80, 100, 140, 200]


async def test_a_budget_created_past_its_thresholds_alerts_for_them_at_once(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    pool, access = project
    await record(pool, access, event("a", NOW), event("b", NOW), event("c", NOW))
    late = await budget(pool, access, limit_usd=Decimal("0.015"))
    today = window_of("day", ZONE, NOW)[0].isoformat()
    assert await alerts(pool) == [
        (late, today, Decimal(50), Decimal("0.014994"), "no_webhook"),
        (late, today, Decimal(80), Decimal("0.014994"), "no_webhook"),
    ]
    # a budget whose window spent nothing yet alerts for nothing
    await budget(pool, access, model="mystery-1", limit_usd=Decimal("0.000001"))
    assert len(await alerts(pool)) == 2


async def test_usage_racing_a_lowered_limit_raises_each_threshold_once(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    """Ingest writes with the levels it read; a change waits for it (and it for the change), so
    every threshold the window reaches alerts once, whichever commits first."""
    pool, access = project
    capped = await budget(pool, access, limit_usd=Decimal(1), thresholds=[Decimal(100)])

    async def lower() -> None:
        await asyncio.sleep(0.005)
        await service.change_budget(pool, access, capped, {"limit_usd": Decimal("0.03")}, now=NOW)

    await asyncio.gather(
        *(record(pool, access, *(event(f"w{w}-{i}", NOW) for i in range(2))) for w in range(6)),
        lower(),
    )
    # 12 x 0.004998 = 0.059976, past 0.03: whoever came last raised the alert, once
    got = await alerts(pool)
    assert [(a[0], a[2]) for a in got] == [(capped, Decimal(100))]
    assert Decimal("0.03") <= got[0][3] <= Decimal("0.059976")


async def partially_priced(pool: asyncpg.Pool) -> dict[tuple[int, datetime], int]:
    rows = await pool.fetch(
        "SELECT budget_id, window_start, sum(partially_priced_events) AS n FROM budget_windows"
        " GROUP BY 1, 2"
    )
    return {(r["budget_id"], r["window_start"]): r["n"] for r in rows}


async def test_a_window_counts_its_partially_priced_events_and_the_migration_counts_the_past(
    project: tuple[asyncpg.Pool, Access],
) -> None:
    """A call that used what its model has no price for (images of gpt-x, priced per token)
    commits its priced part; its window counted unpriced events only, so its committed cost
    read as whole. Ingest counts it now, and the upgrade counts the windows written before,
    by the budgets' rules in SQL: the same counts."""
    pool, access = project
    made = NOW - timedelta(days=3)
    whole = await budget(pool, access, period="month", now=made)
    search = await budget(pool, access, tags={"team": "search"}, now=made)
    model = await budget(pool, access, model="gpt-x", period="total", now=made)

    def call(key: str, when: datetime, team: str, images: int, name: str = "gpt-x") -> bytes:
        usage = {"input_tokens": 1000, "output_tokens": 300, "images": images}
        return msgspec.json.encode({"id": key, "model": name, "occurred_at": when.isoformat(),
                                    "tags": {"team": team}, "usage": usage})  # fmt: skip

    earlier = NOW - timedelta(days=2)
    assert await record(
        pool, access,
        call("priced", NOW, "search", 0),
        call("part-1", NOW, "search", 2),
        call("part-2", NOW, "ads", 1),
        call("part-3", earlier, "search", 1),
        call("unknown", NOW, "search", 1, name="mystery-1"),
    ) == ["recorded"] * 5  # fmt: skip
    statuses = dict(await pool.fetch("SELECT id, status FROM usage_events"))
    assert sorted(statuses.values()).count("partially_priced") == 3

    today = window_of("day", ZONE, NOW)[0]
    got = await partially_priced(pool)
    assert (got[search, today], got[search, window_of("day", ZONE, earlier)[0]]) == (1, 1)
    assert got[model, window_of("total", ZONE, NOW)[0]] == 3
    assert sum(n for (b, _), n in got.items() if b == whole) == 3
    # the committed part of a partially priced call is its tokens' (1000 * 3e-06 + 300 * 6e-06)
    assert (await windows(pool))[search, today] == (Decimal("0.0048") * 2, 3, 1)

    # the upgrade counts the current windows (those that ended, which nothing reads, keep 0)
    upgrade = importlib.import_module(
        "aiserver.ledger.piccolo_migrations.ledger_2026_12_07t01_01_00_000000"
    )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE budget_windows SET partially_priced_events = 0")
        await conn.execute(upgrade.STATEMENTS[0])
    past = "SELECT budget_id, window_start FROM budget_windows WHERE window_end <= now()"
    ended = {tuple(r) for r in await pool.fetch(past)}
    assert (search, window_of("day", ZONE, earlier)[0]) in ended
    assert await partially_priced(pool) == {k: 0 if k in ended else n for k, n in got.items()}

    # an event an API of the release before recorded while the upgrade rolled out was not
    # counted: a reprice that moves it out takes the count to 0, not below
    key = (model, window_of("total", ZONE, NOW)[0])
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE budget_windows SET partially_priced_events = 0")
        out = WindowSum(None, Decimal(0), 0, 0, partially_priced_events=-1)
        await budget_store.add_to_windows(conn, access.project_id or 0, {key: out})
    assert (await partially_priced(pool))[key] == 0


@pytest.mark.parametrize(
    "zone",
    ["UTC", "Europe/Berlin", "America/Santiago", "Australia/Lord_Howe", "Asia/Kathmandu",
     "Pacific/Chatham", "America/St_Johns"],
)  # fmt: skip
def test_window_sums_find_each_event_s_own_window_in_every_zone(zone: str) -> None:
    """window_sums remembers the windows it found by the quarter of an hour of the time
    (looking each up anew cost 12.7 us of its 13.8 per event); each event must still land in
    the window `window_of` gives its own time: over 400 days of random times and every
    midnight, DST change and quarter edge near them, in zones of half and three-quarter hour
    offsets and DST changes of half an hour (Lord Howe) or at midnight (Santiago)."""
    rng = random.Random(f"window-sums-{zone}")
    start = datetime(2025, 10, 1, tzinfo=UTC)
    times = [start + timedelta(seconds=rng.randrange(400 * 86400)) for _ in range(3000)]
    for day in range(400):  # each local midnight, and a moment either side of it
        midnight = window_of("day", zone, start + timedelta(days=day))[0]
        times += [midnight, midnight - timedelta(microseconds=1), midnight + timedelta(minutes=7)]
    rng.shuffle(times)
    budgets = [BudgetScope(id=n, tags={}, model=None, period=p) for n, p in enumerate(PERIODS)]
    spends = [Spend(at, {}, "m", None, Decimal("0.001")) for at in times]
    expected: dict[tuple[int, datetime], int] = defaultdict(int)
    for at in times:
        for budget in budgets:
            expected[budget.id, window_of(budget.period, zone, at)[0]] += 1
    sums = window_sums(budgets, zone, spends)
    assert {key: found.events for key, found in sums.items()} == expected
    assert all(found.committed == Decimal("0.001") * found.events for found in sums.values())
