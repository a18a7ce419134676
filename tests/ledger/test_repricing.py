"""Repricing recorded usage: a dry run against applying it (exact totals, worked out by hand
here), one adjustment per changed event, the rollups fixed in the same transaction, and the
automatic reprice after a catalog change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

from aiserver.core_db.database import database, require_pool
from aiserver.costs.catalog import Catalog, load_catalog
from aiserver.costs.refresh import Outcome, refresh_catalog
from aiserver.costs.source import DEFAULT_SOURCE
from aiserver.costs.store.metadata import bump_catalog_version, lock_catalog_version
from aiserver.costs.store.overrides import replace_override
from aiserver.ledger.access import Access
from aiserver.ledger.jobs import REPRICE_JOB, REPRICE_TASK
from aiserver.ledger.repricing import automatic
from aiserver.ledger.repricing.automatic import reprice_after_catalog_change
from aiserver.ledger.repricing.execution import Outcome as RunOutcome
from aiserver.ledger.repricing.execution import execute_run
from aiserver.ledger.repricing.runs import (
    ModelChange,
    RepriceRequest,
    event_adjustments,
    request_reprice,
    show_run,
)
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.spend.folding import fold as fold_once
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.ingest import UsageRecorder
from aiserver.taskrunner.health import QUEUE_NAME
from aiserver.taskrunner.worker import worker_options

from ..conftest import Settings, child_env, replace_settings, taskrunner_settings
from ..support.catalog import document, models
from ..support.folding import BACKLOG, FOLD_CLAIM, outbox_backlog, still_folding
from ..support.processes import run_module
from ..support.reprice_rollups import expected_rollups, fold, rollups
from ..support.upstream import Upstream
from ..support.waits import running

T0 = datetime(2026, 11, 1, tzinfo=UTC)
T1 = datetime(2026, 11, 20, tzinfo=UTC)  # gpt-x's price changes here; gpt-y's first price
NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
OPERATOR = Access.operator()


def _row(id: int, model: str, start: datetime, end: datetime | None, inp: str, out: str) -> Any:
    return {
        "id": id, "source": "test", "provider": "openai", "model": model, "mode": "chat",
        "valid_from": start, "valid_to": end,
        "entry": {"litellm_provider": "openai", "mode": "chat",
                  "input_cost_per_token": Decimal(inp), "output_cost_per_token": Decimal(out)},
    }  # fmt: skip


#: What the events were recorded with: gpt-x at one price all along; gpt-y unknown.
RECORDED_WITH = Catalog.build([_row(1, "gpt-x", T0, None, "1e-06", "2e-06")], aliases={}, version=7)
#: Today's catalog: gpt-x's price went up at T1 (a version the recording missed), and gpt-y is
#: known, with a first price from T1.
TODAY = Catalog.build(
    [
        _row(1, "gpt-x", T0, T1, "1e-06", "2e-06"),
        _row(2, "gpt-x", T1, None, "3e-06", "6e-06"),
        _row(4, "gpt-y", T1, None, "5e-06", "5e-06"),
    ],
    aliases={},
    version=8,
)


@dataclass(frozen=True)
class Call:
    key: str
    model: str
    at: str
    input_tokens: int
    output_tokens: int
    tags: dict[str, str]
    old: Decimal  # what RECORDED_WITH billed (0: unpriced)
    new: Decimal  # what TODAY bills: tokens times the prices of its time, by hand


# fmt: off
CALLS = [
    Call("e1", "gpt-x", "2026-11-10T10:15:00Z", 100, 10, {"team": "a"},
         Decimal("0.00012"), Decimal("0.00012")),   # before T1: the same price, unchanged
    Call("e2", "gpt-x", "2026-11-25T10:20:00Z", 100, 10, {"team": "a"},
         Decimal("0.00012"), Decimal("0.00036")),   # 100 * 3e-06 + 10 * 6e-06
    Call("e3", "gpt-x", "2026-11-25T10:40:00Z", 1000, 100, {"team": "b", "user": "u1"},
         Decimal("0.0012"), Decimal("0.0036")),     # 1000 * 3e-06 + 100 * 6e-06
    Call("e4", "gpt-y", "2026-11-10T11:00:00Z", 200, 20, {"team": "a"},
         Decimal(0), Decimal("0.0011")),            # before gpt-y's first price: that one
    # recorded after the first fold, so still in the outbox when repriced
    Call("e5", "gpt-y", "2026-11-26T09:00:00Z", 10, 0, {},
         Decimal(0), Decimal("0.00005")),           # 10 * 5e-06
    Call("e6", "openai/gpt-x", "2026-11-25T12:00:00Z", 1, 1, {"team": "b"},
         Decimal("0.000003"), Decimal("0.000009")),  # 3e-06 + 6e-06
]
# fmt: on


def raw(call: Call) -> bytes:
    return msgspec.json.encode(
        {
            "id": call.key,
            "model": call.model,
            "occurred_at": call.at,
            "usage": {"input_tokens": call.input_tokens, "output_tokens": call.output_tokens},
            "tags": call.tags,
        }
    )


@dataclass
class Ledger:
    pool: asyncpg.Pool
    p: int  # rolls up "team"
    q: int


@pytest.fixture
async def ledger(settings: Settings) -> AsyncIterator[Ledger]:
    async with database(settings.core):
        pool = require_pool()
        add = "INSERT INTO projects (slug, name, rollup_tags) VALUES ($1, $2, $3) RETURNING id"
        p = await pool.fetchval(add, "p", "P", ["team"])
        q = await pool.fetchval(add, "q", "Q", [])
        yield Ledger(pool, p, q)


async def record(
    pool: asyncpg.Pool, project_id: int, catalog: Catalog, *raws: bytes, now: datetime = NOW
) -> None:
    report = await UsageRecorder(LedgerSettings()).record(
        pool, project_id, decode_items(raws), catalog=catalog, now=now
    )
    assert report.recorded == len(raws), report


async def recorded(ledger: Ledger) -> None:
    """CALLS in p, the first four folded and the last two still in the outbox; one gpt-x call
    in q, folded."""
    await record(ledger.pool, ledger.p, RECORDED_WITH, *(raw(c) for c in CALLS[:4]))
    await record(ledger.pool, ledger.q, RECORDED_WITH, raw(CALLS[1]))
    async with ledger.pool.acquire() as conn:
        await fold(conn)
    await record(ledger.pool, ledger.p, RECORDED_WITH, *(raw(c) for c in CALLS[4:]))


async def events(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    rows = await pool.fetch("SELECT * FROM usage_events ORDER BY id")
    return [tuple(r) for r in rows]


async def reprice(ledger: Ledger, *, dry_run: bool, **filters: Any) -> Any:
    run = await request_reprice(
        ledger.pool, OPERATOR, RepriceRequest(project="p", dry_run=dry_run, **filters)
    )
    outcome = await execute_run(ledger.pool, run.id, TODAY, batch_size=2)
    assert outcome is RunOutcome.DONE
    return await show_run(ledger.pool, OPERATOR, run.id)


def expected_models() -> list[ModelChange]:
    """Per model as priced today, summed by hand from CALLS."""
    result = []
    for model, calls in (
        ("gpt-x", [c for c in CALLS if c.model.endswith("gpt-x")]),
        ("gpt-y", [c for c in CALLS if c.model == "gpt-y"]),
    ):
        unpriced = sum(1 for c in calls if c.old == 0)
        result.append(
            ModelChange(
                model=model,
                events=len(calls),
                changed=sum(1 for c in calls if c.old != c.new),
                old_total=str(sum((c.old for c in calls), Decimal(0)).normalize()),
                new_total=str(sum((c.new for c in calls), Decimal(0)).normalize()),
                unpriced_before=unpriced,
                unpriced_after=0,
            )
        )
    return result


async def test_a_dry_run_says_what_would_change_per_model_and_writes_nothing_but_the_run(
    ledger: Ledger,
) -> None:
    await recorded(ledger)
    events_before = await events(ledger.pool)
    rollups_before = await rollups(ledger.pool)

    run = await reprice(ledger, dry_run=True)

    assert (run.state, run.dry_run, run.project, run.catalog_version) == ("done", True, "p", 8)
    assert run.models == expected_models()
    assert run.models[0] == ModelChange(
        model="gpt-x", events=4, changed=3, old_total="0.001443", new_total="0.004089",
        unpriced_before=0, unpriced_after=0,
    )  # fmt: skip
    assert (run.events_examined, run.events_changed) == (6, 5)
    assert (run.old_total, run.new_total) == ("0.001443", "0.005239")
    assert await events(ledger.pool) == events_before
    assert await rollups(ledger.pool) == rollups_before
    assert await ledger.pool.fetchval("SELECT count(*) FROM usage_adjustments") == 0


async def test_applying_reprices_each_event_adjusts_it_once_and_fixes_the_rollups(
    ledger: Ledger,
) -> None:
    await recorded(ledger)
    q_before = await ledger.pool.fetch("SELECT * FROM usage_events WHERE project_id = $1", ledger.q)
    dry = await reprice(ledger, dry_run=True)

    run = await reprice(ledger, dry_run=False)

    assert run.models == dry.models  # the dry run said what applying does
    assert (run.events_examined, run.events_changed, run.old_total, run.new_total) == (
        6, 5, "0.001443", "0.005239",
    )  # fmt: skip
    rows = await ledger.pool.fetch(
        "SELECT event_key, status, total_cost, price_version, matched_model, pricing_note"
        " FROM usage_events WHERE project_id = $1 ORDER BY event_key",
        ledger.p,
    )
    assert [(r["event_key"], r["status"], r["total_cost"], r["price_version"]) for r in rows] == [
        (c.key, "priced", c.new, 1 if c.key == "e1" else 2 if "gpt-x" in c.model else 4)
        for c in CALLS
    ]
    assert {r["matched_model"] for r in rows} == {"gpt-x", "gpt-y"}
    e4 = next(r for r in rows if r["event_key"] == "e4")
    assert e4["pricing_note"] == (
        "2026-11-10T11:00:00+00:00 is before the catalog's first price for 'gpt-y' "
        "(2026-11-20T00:00:00+00:00); that first price was used"
    )
    adjustments = await ledger.pool.fetch(
        """
        SELECT e.event_key, a.run_id, a.old_status, a.new_status, a.old_cost, a.new_cost,
               a.old_price_version, a.new_price_version
        FROM usage_adjustments a JOIN usage_events e ON e.id = a.event_id ORDER BY e.event_key
        """
    )
    assert [tuple(a) for a in adjustments] == [
        ("e2", run.id, "priced", "priced", Decimal("0.00012"), Decimal("0.00036"), 1, 2),
        ("e3", run.id, "priced", "priced", Decimal("0.0012"), Decimal("0.0036"), 1, 2),
        ("e4", run.id, "unpriced", "priced", None, Decimal("0.0011"), None, 4),
        ("e5", run.id, "unpriced", "priced", None, Decimal("0.00005"), None, 4),
        ("e6", run.id, "priced", "priced", Decimal("0.000003"), Decimal("0.000009"), 1, 2),
    ]
    # one event's trail, as its page shows it; another project's id for it finds none
    e4_id = await ledger.pool.fetchval(
        "SELECT id FROM usage_events WHERE project_id = $1 AND event_key = 'e4'", ledger.p
    )
    (trail,) = await event_adjustments(ledger.pool, ledger.p, e4_id)
    assert (trail.run_id, trail.old_status, trail.new_status, trail.old_cost, trail.new_cost,
            trail.old_price_version, trail.new_price_version) == (
        run.id, "unpriced", "priced", None, Decimal("0.0011"), None, 4
    )  # fmt: skip
    assert await event_adjustments(ledger.pool, ledger.q, e4_id) == []
    # another project's events are not touched
    assert (
        await ledger.pool.fetch("SELECT * FROM usage_events WHERE project_id = $1", ledger.q)
        == q_before
    )
    # the rollups moved the folded events (e1-e4) to their new rows at once; folding the
    # rest (e5, e6: still in the outbox, so the fold reads their new pricing) gives exactly
    # what folding every event from scratch gives
    async with ledger.pool.acquire() as conn:
        gpt_y = await conn.fetch(
            "SELECT status, events, cost FROM usage_rollups WHERE model = 'gpt-y'"
        )
        assert [tuple(r) for r in gpt_y] == [("priced", 1, Decimal("0.0011"))]
        await fold(conn)
        assert await rollups(conn) == await expected_rollups(conn)
    # applied again, nothing is left to change
    again = await reprice(ledger, dry_run=False)
    assert (again.events_examined, again.events_changed) == (6, 0)
    assert await ledger.pool.fetchval("SELECT count(*) FROM usage_adjustments") == 5


async def test_a_fold_in_flight_is_waited_for_and_its_rows_then_moved_by_the_reprice(
    ledger: Ledger, settings: Settings
) -> None:
    """A fold that has claimed the outbox rows and not committed yet: the reprice waits for it
    at the outbox's locks, then finds the events folded and moves them in the rollups."""
    await record(ledger.pool, ledger.p, RECORDED_WITH, *(raw(c) for c in CALLS))
    folder = await asyncpg.connect(settings.core.database_url)
    try:
        folding = folder.transaction()
        await folding.start()
        await fold(folder)
        run = await request_reprice(
            ledger.pool, OPERATOR, RepriceRequest(project="p", dry_run=False)
        )
        repricing = asyncio.create_task(execute_run(ledger.pool, run.id, TODAY, batch_size=10))
        waiting = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        async with asyncio.timeout(30):
            while not await folder.fetchval(waiting):
                await asyncio.sleep(0.02)
        assert not repricing.done()
        await folding.commit()
        assert await repricing is RunOutcome.DONE
        assert await folder.fetchval("SELECT count(*) FROM usage_outbox") == 0
        assert await rollups(folder) == await expected_rollups(folder)
        assert await folder.fetchval("SELECT sum(cost) FROM usage_rollups") == sum(
            c.new for c in CALLS
        )
    finally:
        await folder.close()


#: Outbox rows ahead of p's (project 0 sorts first; no event behind them): a fold's claim takes
#: about half a second to get through them here, and the reprice of CALLS about 20 ms.


async def test_a_fold_that_began_before_a_reprice_committed_never_folds_the_old_price(
    ledger: Ledger, settings: Settings
) -> None:
    """A fold's statement sees the ledger as it was when the statement began. If a reprice of
    events still in the outbox commits after that and before the fold's claim reaches their
    rows, the fold must not take those rows and fold the events as it saw them (at their old
    price; the reprice left the rollups to the fold). The reprice gives them new rows, so the
    fold finds the old ones deleted and skips them; the next fold folds the new prices."""
    await record(ledger.pool, ledger.p, RECORDED_WITH, *(raw(c) for c in CALLS))
    await outbox_backlog(ledger.pool, BACKLOG)
    run = await request_reprice(ledger.pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    folder = await asyncpg.connect(settings.core.database_url)
    try:
        await fold_once(folder, limit=0)  # prepared (and its types looked up) before the race
        folding = asyncio.create_task(fold_once(folder, limit=BACKLOG + len(CALLS)))
        await running(ledger.pool, folder, FOLD_CLAIM)
        assert await execute_run(ledger.pool, run.id, TODAY, batch_size=10) is RunOutcome.DONE
        await still_folding(ledger.pool, folder)
        result = await folding
    finally:
        await folder.close()
    # the fold took the backlog and, of p's rows, only those of the events the reprice left as
    # they were (e1's price did not change); it had replaced the others
    unchanged = [c for c in CALLS if c.old == c.new]
    assert (result.events, result.orphaned) == (len(unchanged), BACKLOG) == (1, BACKLOG)
    async with ledger.pool.acquire() as conn:
        await fold(conn)
        assert await conn.fetchval("SELECT count(*) FROM usage_outbox") == 0
        assert await rollups(conn) == await expected_rollups(conn)
        assert await conn.fetchval("SELECT sum(cost) FROM usage_rollups") == sum(
            c.new for c in CALLS
        )


async def test_a_reprice_waits_for_a_rebuild_in_flight_and_then_moves_the_rebuilt_rollups(
    ledger: Ledger, settings: Settings
) -> None:
    """The project's rolled-up keys changed (team, then team and user) and the rebuild holds the
    project's rollup lock, not committed yet: the reprice waits for it, then corrects the
    rollups the rebuild made (keyed by the new keys). Nothing is counted twice or missed: the
    rollups end equal to those of every event summed from scratch with the new keys, and the
    daily rollups agree with them."""
    from aiserver.ledger import projects
    from aiserver.ledger.spend.rebuild import rebuild_rollups

    await recorded(ledger)

    async def later(*_: Any) -> None:  # the rebuild job the change enqueues: run by hand below
        return None

    await projects.change_project(
        ledger.pool, OPERATOR, "p", rollup_tags=["team", "user"], enqueue_rebuild=later
    )
    rebuilder = await asyncpg.connect(settings.core.database_url)
    try:
        rebuilding = rebuilder.transaction()
        await rebuilding.start()
        rebuilt = await rebuild_rollups(rebuilder, ledger.p)  # a savepoint: the lock stays
        assert rebuilt is not None
        assert rebuilt.rollup_tags == ("team", "user")
        run = await request_reprice(
            ledger.pool, OPERATOR, RepriceRequest(project="p", dry_run=False)
        )
        repricing = asyncio.create_task(execute_run(ledger.pool, run.id, TODAY, batch_size=2))
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        )
        async with asyncio.timeout(30):
            while not await rebuilder.fetchval(waiting):
                await asyncio.sleep(0.02)
        assert not repricing.done()
        await rebuilding.commit()
        assert await repricing is RunOutcome.DONE
        await fold(rebuilder)  # e5 and e6, still in the outbox, with their new prices
        assert await rollups(rebuilder) == await expected_rollups(rebuilder)
        user_rows = await rebuilder.fetchval(
            "SELECT count(*) FROM usage_rollups WHERE project_id = $1 AND tags ? 'user'",
            ledger.p,
        )
        assert user_rows == 1  # e3's user, rolled up by the rebuild
        assert await rebuilder.fetchval(
            "SELECT sum(cost) FROM usage_rollups WHERE project_id = $1", ledger.p
        ) == sum(c.new for c in CALLS)
    finally:
        await rebuilder.close()


@pytest.mark.parametrize("keys", [["team", "user"], []], ids=["key-added", "key-removed"])
async def test_a_reprice_after_a_change_of_keys_whose_rebuild_has_not_run_corrects_exactly(
    ledger: Ledger, keys: list[str]
) -> None:
    """The project's rolled-up keys changed (team, to team and user, or to none) and the
    rebuild the change enqueued has not run yet (the task runner is busy, or down): its rollups
    are keyed the old way. The reprice rebuilds them first, then corrects them: the rollups are
    exact at its COMMIT, keyed the new way. (Before, its corrections were keyed the new way:
    e3's and e2's cost-only corrections went into rows of 0 events and were dropped, e4's into
    rows of their own, until the rebuild.) The rebuild that comes later changes nothing."""
    from aiserver.ledger import projects
    from aiserver.ledger.spend.rebuild import rebuild_rollups

    await recorded(ledger)
    enqueued: list[tuple[int, str]] = []

    async def later(project_id: int, job_id: str) -> None:  # the task runner has not got to it
        enqueued.append((project_id, job_id))

    await projects.change_project(
        ledger.pool, OPERATOR, "p", rollup_tags=keys, enqueue_rebuild=later
    )
    assert [p for p, _ in enqueued] == [ledger.p]
    await reprice(ledger, dry_run=False)
    async with ledger.pool.acquire() as conn:
        await fold(conn)  # e5 and e6, still in the outbox, with their new prices
        assert await conn.fetchval(
            "SELECT sum(cost) FROM usage_rollups WHERE project_id = $1", ledger.p
        ) == sum(c.new for c in CALLS)
        assert await rollups(conn) == await expected_rollups(conn)  # keyed the new way
        assert not await conn.fetchval(
            "SELECT rollup_rebuild_pending FROM projects WHERE id = $1", ledger.p
        )
        made = await rollups(conn)
        assert await rebuild_rollups(conn, ledger.p) is not None  # the job the change enqueued
        assert await rollups(conn) == made


async def test_a_filter_keeps_the_run_to_its_window_model_and_status(ledger: Ledger) -> None:
    await recorded(ledger)
    run = await reprice(ledger, dry_run=False, model="gpt-x", since="2026-11-25T10:30:00Z")
    # e3 and e6 (openai/gpt-x: priced as gpt-x); not e1, e2 (earlier), nor gpt-y
    assert (run.events_examined, run.events_changed, run.new_total) == (2, 2, "0.003609")
    unpriced = await reprice(ledger, dry_run=True, status="unpriced")
    assert [(m.model, m.events, m.new_total) for m in unpriced.models] == [("gpt-y", 2, "0.00115")]


async def test_the_operator_reprices_every_project_in_one_run(ledger: Ledger) -> None:
    await recorded(ledger)
    run = await request_reprice(
        ledger.pool, OPERATOR, RepriceRequest(all_projects=True, dry_run=False)
    )
    assert await execute_run(ledger.pool, run.id, TODAY, batch_size=2) is RunOutcome.DONE

    done = await show_run(ledger.pool, OPERATOR, run.id)
    # p's six calls, and q's copy of e2 (0.00012 then, 0.00036 now)
    assert (done.project, done.events_examined, done.events_changed) == (None, 7, 6)
    assert (done.old_total, done.new_total) == ("0.001563", "0.005599")
    by_project = await ledger.pool.fetch(
        "SELECT project_id, count(*) FROM usage_adjustments GROUP BY 1 ORDER BY 1"
    )
    assert [tuple(r) for r in by_project] == [(ledger.p, 5), (ledger.q, 1)]
    async with ledger.pool.acquire() as conn:
        await fold(conn)
        assert await rollups(conn) == await expected_rollups(conn)


async def test_a_run_that_is_done_is_not_run_again(ledger: Ledger) -> None:
    await recorded(ledger)
    run = await reprice(ledger, dry_run=False)
    assert await execute_run(ledger.pool, run.id, TODAY) is RunOutcome.DONE
    assert await ledger.pool.fetchval("SELECT count(*) FROM usage_adjustments") == 5
    assert (await show_run(ledger.pool, OPERATOR, run.id)).events_examined == 6


# -- the automatic reprice after a catalog change -------------------------------------------------


@pytest.fixture
async def catalogued(settings: Settings, upstream: Upstream) -> AsyncIterator[Ledger]:
    """A ledger whose database holds a catalog of three models (gpt-test-000 to -002)."""
    cfg = replace_settings(settings, model_cost_source_url=upstream.url)
    upstream.serve(document(models(3)))
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    async with database(cfg.core):
        pool = require_pool()
        p = await pool.fetchval("INSERT INTO projects (slug, name) VALUES ('p', 'P') RETURNING id")
        yield Ledger(pool, p, p)


async def test_after_a_catalog_change_the_unpriced_events_it_can_price_are_repriced(
    catalogued: Ledger,
) -> None:
    pool = catalogued.pool
    async with pool.acquire() as conn:
        today = await load_catalog(conn)
    now = datetime.now(UTC)
    calls = [
        {"id": "mine", "model": "my-model", "provider": "acme", "tags": {"team": "a"},
         "usage": {"input_tokens": 1000, "output_tokens": 100}},
        {"id": "never", "model": "never-heard", "usage": {"input_tokens": 5}},
        {"id": "known", "model": "gpt-test-000", "usage": {"input_tokens": 10}},
    ]  # fmt: skip
    await record(pool, catalogued.p, today, *(msgspec.json.encode(c) for c in calls), now=now)
    async with pool.acquire() as conn:
        await fold(conn)

    # the catalog can price none of the unpriced: the version is looked at once, and nothing
    # changes
    first = await reprice_after_catalog_change(pool)
    assert (first.outcome, first.models) == ("repriced", ())
    assert (await reprice_after_catalog_change(pool)).outcome == "up_to_date"

    async with pool.acquire() as conn, conn.transaction():  # what PUT /v1/overrides does
        await lock_catalog_version(conn, DEFAULT_SOURCE)
        override = await replace_override(
            conn, provider="acme", model="my-model", reason="new model",
            prices={"input_cost_per_token": Decimal("1e-05"),
                    "output_cost_per_token": Decimal("3e-05")},
        )  # fmt: skip
        version = await bump_catalog_version(conn, DEFAULT_SOURCE)

    report = await reprice_after_catalog_change(pool)

    assert (report.outcome, report.catalog_version, report.models) == (
        "repriced", version, ("my-model",),
    )  # fmt: skip
    run = await show_run(pool, OPERATOR, report.run_id or 0)
    assert (run.requested_by, run.project, run.dry_run, run.state) == (
        "automatic", None, False, "done",
    )  # fmt: skip
    assert run.models == [
        ModelChange(model="my-model", events=1, changed=1, old_total="0", new_total="0.013",
                    unpriced_before=1, unpriced_after=0)
    ]  # fmt: skip
    mine = await pool.fetchrow(
        "SELECT status, total_cost, override_id, pricing_note FROM usage_events"
        " WHERE event_key = 'mine'"
    )
    # 1000 * 1e-05 + 100 * 3e-05, with the override that came after the call, which says so
    assert (mine["status"], mine["total_cost"], mine["override_id"]) == (
        "priced", Decimal("0.013"), override.id,
    )  # fmt: skip
    assert mine["pricing_note"] == (
        f"'my-model' had no price at {now.isoformat()}; priced with its earliest price after "
        f"it, from {override.valid_from.isoformat()}"
    )
    assert (
        await pool.fetchval("SELECT status FROM usage_events WHERE event_key = 'never'")
        == "unpriced"
    )
    async with pool.acquire() as conn:
        assert await rollups(conn) == await expected_rollups(conn)
        row = await conn.fetchrow(
            "SELECT status, events, cost FROM usage_rollups WHERE model = 'my-model'"
        )
    assert tuple(row) == ("priced", 1, Decimal("0.013"))
    assert (await reprice_after_catalog_change(pool)).outcome == "up_to_date"


async def test_the_command_line_does_a_run_at_once_showing_its_progress(
    catalogued: Ledger, settings: Settings
) -> None:
    # recorded unpriced (no catalog then); the database's catalog prices gpt-test-001 at
    # 2e-06 in, 4e-06 out: 5 * (100 * 2e-06 + 10 * 4e-06) = 0.0012
    calls = [
        msgspec.json.encode(
            {
                "id": f"c{i}",
                "model": "gpt-test-001",
                "usage": {"input_tokens": 100, "output_tokens": 10},
            }
        )
        for i in range(5)
    ]
    report = await UsageRecorder(LedgerSettings()).record(
        catalogued.pool, catalogued.p, decode_items(calls), catalog=None
    )
    assert report.recorded == 5
    args = ("reprice", "--project", "p", "--dry-run", "--batch-size", "2")

    status, out, err = await run_module("aiserver.ledger.cli", child_env(settings), *args)

    assert status == 0, err
    assert out.splitlines()[1:6] == [
        "  events of       all",
        "  events examined            5",
        "  events changed             5",
        "  old total                  0 USD",
        "  new total             0.0012 USD",
    ]
    assert "gpt-test-001" in out.splitlines()[-1]
    # progress without a terminal: the first batch at once, then a line every 10 s (not one
    # per batch), and the last
    assert [line.split(": ", 2)[2] for line in err.splitlines() if "reprice: run" in line] == [
        "2 examined, 2 changed, 0 -> 0.00048 USD",
        "5 examined, 5 changed, 0 -> 0.0012 USD",
    ]
    assert (
        await catalogued.pool.fetchval(
            "SELECT count(*) FROM usage_events WHERE status = 'unpriced'"
        )
        == 5
    )  # a dry run


async def run_burst(settings: Settings) -> tuple[int, int]:
    """A task runner until its queue is empty (no cron): its jobs complete and failed."""
    options = worker_options(taskrunner_settings(settings))
    options.update(cron_jobs=[], burst=True, poll_delay=0, handle_signals=False)
    worker = Worker(**options)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker.jobs_complete, worker.jobs_failed


async def test_the_task_runner_does_a_run_it_is_given_and_the_automatic_reprice(
    settings: Settings,
) -> None:
    """The jobs by name, in a real worker: its start seeds the bundled catalog, which knows
    gpt-4o (2.5e-06 in, 1e-05 out), a model the events were recorded without."""
    pool = await asyncpg.create_pool(settings.core.database_url, min_size=1, max_size=4)
    redis = await create_pool(RedisSettings.from_dsn(settings.core.redis_url))
    await redis.flushdb()
    try:
        p = await pool.fetchval("INSERT INTO projects (slug, name) VALUES ('p', 'P') RETURNING id")
        call = {
            "id": "c1",
            "model": "gpt-4o",
            "usage": {"input_tokens": 1000, "output_tokens": 500},
        }
        await record(pool, p, RECORDED_WITH, msgspec.json.encode(call), now=datetime.now(UTC))
        dry = await request_reprice(pool, OPERATOR, RepriceRequest(project="p"))
        # the dry run first (its job is done before the next is enqueued), then the cron task
        await redis.enqueue_job(REPRICE_JOB, dry.id, _queue_name=QUEUE_NAME)
        assert await run_burst(settings) == (1, 0)
        await redis.enqueue_job(REPRICE_TASK, _queue_name=QUEUE_NAME)
        assert await run_burst(settings) == (1, 0)

        results = sorted((r.function, r.result) for r in await redis.all_job_results())
        assert results[0] == (REPRICE_JOB, {"outcome": "done", "run_id": dry.id})
        assert results[1][0] == REPRICE_TASK
        automatic = results[1][1]
        assert (automatic["outcome"], automatic["models"]) == ("repriced", ["gpt-4o"])
        shown = await show_run(pool, OPERATOR, dry.id)
        assert (shown.state, shown.events_changed, shown.new_total) == ("done", 1, "0.0075")
        event = await pool.fetchrow("SELECT status, total_cost FROM usage_events")
        assert tuple(event) == ("priced", Decimal("0.0075"))  # 1000 * 2.5e-06 + 500 * 1e-05
    finally:
        await redis.flushdb()
        await redis.aclose()
        await pool.close()


async def test_a_connection_lost_in_the_automatic_reprice_fails_with_its_own_error(
    catalogued: Ledger, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its backend ended while it wrote its run (PostgreSQL restarted, a connection cut): the
    job failed with `InterfaceError: cannot call Connection.is_closed(): connection has been
    released back to the pool`, from its own clean-up, which hid the error that mattered (a
    helper's chaos review). Here the run's insert meets a backend PostgreSQL has ended."""
    pool = catalogued.pool
    now = datetime.now(UTC)
    unknown = {"id": "u", "model": "my-model", "provider": "acme", "usage": {"input_tokens": 1}}
    async with pool.acquire() as conn:
        today = await load_catalog(conn)
    await record(pool, catalogued.p, today, msgspec.json.encode(unknown), now=now)
    async with pool.acquire() as conn, conn.transaction():
        await lock_catalog_version(conn, DEFAULT_SOURCE)
        await replace_override(conn, provider="acme", model="my-model", reason="new",
                               prices={"input_cost_per_token": Decimal("1e-05")})  # fmt: skip
        await bump_catalog_version(conn, DEFAULT_SOURCE)
    real_insert = automatic.store.insert_run

    async def insert_after_the_backend_ended(conn: Any, **fields: Any) -> Any:
        killer = await asyncpg.connect(settings.core.database_url)
        try:
            await killer.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        finally:
            await killer.close()
        # the insert meets the ended backend once the client has heard of it (before, its
        # statement may start as the news arrives: asyncpg's InternalClientError)
        async with asyncio.timeout(10):
            while True:
                try:
                    if conn.is_closed():
                        break
                except asyncpg.InterfaceError:  # released by asyncpg: gone
                    break
                await asyncio.sleep(0.01)
        return await real_insert(conn, **fields)

    monkeypatch.setattr(automatic.store, "insert_run", insert_after_the_backend_ended)
    with pytest.raises((asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                        ConnectionError)) as failed:  # fmt: skip
        await reprice_after_catalog_change(pool)
    assert "is_closed" not in str(failed.value)  # the insert's own, not the clean-up's
    monkeypatch.undo()
    # nothing was kept of it, and the next tick does the reprice
    report = await reprice_after_catalog_change(pool)
    assert (report.outcome, report.models) == ("repriced", ("my-model",))


async def test_a_batch_finds_its_outbox_rows_by_index_not_by_reading_the_outbox(
    ledger: Ledger,
) -> None:
    """A race review: behind the folds (an outbox of many rows), each reprice batch read the
    whole outbox with row locks, for seconds to minutes, holding the catalog's lock shared (a
    price override waiting on it answered 503). The rows of a batch's events are found by the
    index `usage_outbox_event` now, in a plan that reads no other row."""
    from aiserver.ledger.repricing.store import LOCK_OUTBOX

    pool = ledger.pool
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO usage_outbox (project_id, event_id, occurred_at)"
            " SELECT $1, n, now() FROM generate_series(1, 50000) AS n",
            ledger.p,
        )
        await conn.execute("ANALYZE usage_outbox")
        events = list(range(1000, 1050))
        async with conn.transaction():
            plan = "\n".join(
                r[0] for r in await conn.fetch(f"EXPLAIN {LOCK_OUTBOX}", [ledger.p] * 50, events)
            )
            locked = await conn.fetch(LOCK_OUTBOX, [ledger.p] * 50, events)
    assert len(locked) == 50
    assert "usage_outbox_event" in plan, plan
    assert "Seq Scan on usage_outbox" not in plan, plan
