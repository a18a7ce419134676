"""Repricing against what runs beside it, second review: a batch that PostgreSQL rolls back to
break a deadlock is done again, not the end of the run. Each ends with the events, the rollups
and the budget windows equal to what summing the events from scratch gives."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import pytest

from aiserver.costs.pricing.exact import ADD
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service
from aiserver.ledger.repricing.execution import Outcome as RunOutcome
from aiserver.ledger.repricing.execution import RunProgress, execute_run
from aiserver.ledger.repricing.runs import RepriceRequest, request_reprice, show_run
from aiserver.ledger.repricing.store import unfinished_runs
from aiserver.ledger.spend.store import rollups as rollup_store

from ..conftest import Settings
from ..support.reprice_rollups import expected_rollups, fold, rollups
from ..support.waits import WAIT_S
from .test_budget_commits import brute_force, windows
from .test_repricing import CALLS, OPERATOR, RECORDED_WITH, TODAY, Ledger, ledger, raw, record

__all__ = ["ledger"]  # the fixture, used by name

_WAITING = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


async def _waiters(pool: asyncpg.Pool, count: int) -> None:
    """Until `count` sessions of this database wait for a lock."""
    async with asyncio.timeout(WAIT_S):
        while await pool.fetchval(_WAITING) < count:
            await asyncio.sleep(0.01)


async def _session(settings: Settings) -> asyncpg.Connection:
    """A connection that never is the one PostgreSQL picks to break a deadlock: it looks for
    one only after 60 s of waiting, the reprice after its 1 s."""
    conn = await asyncpg.connect(settings.core.database_url)
    await conn.execute("SET deadlock_timeout = '60s'")
    return conn


async def test_a_batch_rolled_back_to_break_a_deadlock_is_done_again(
    ledger: Ledger, settings: Settings
) -> None:
    """A session that holds an event of the batch (as a correction would) and then asks for
    the project's rollup lock exclusively (as a rebuild does first) waits for the batch, which
    holds that lock shared and waits for the event: a circle. PostgreSQL breaks it by rolling
    the batch back (the session looks for deadlocks only after 60 s), and the batch is done
    again. (Before, the run ended `failed` with the DeadlockDetectedError; the cron does not
    resume a failed run, so an automatic run left its events unpriced until the next catalog
    change. The circle this test first built, a rebuild, a time zone change and the batch, no
    longer forms: the change and the batch take the rollup lock first, as the rebuild does.)"""
    pool = ledger.pool
    access = Access(ledger.p, "p", frozenset({"admin"}))
    await service.create_budget(pool, access, name="all", limit_usd=Decimal(1), period="total")
    await record(pool, ledger.p, RECORDED_WITH, *(raw(c) for c in CALLS[:4]))
    async with pool.acquire() as conn:
        await fold(conn)
    await record(pool, ledger.p, RECORDED_WITH, *(raw(c) for c in CALLS[4:]))
    run = await request_reprice(pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    holder = await _session(settings)
    try:
        holding = holder.transaction()
        await holding.start()
        await holder.execute(
            "SELECT 1 FROM usage_events WHERE project_id = $1 FOR UPDATE", ledger.p
        )
        # the batch takes the rollup lock shared, its gate and row, then waits for the events
        repricing = asyncio.create_task(execute_run(pool, run.id, TODAY, batch_size=10))
        await _waiters(pool, 1)
        taking = asyncio.create_task(rollup_store.lock_project(holder, ledger.p))
        async with asyncio.timeout(WAIT_S):
            await taking  # granted once the batch was rolled back
        await holding.rollback()
        assert await repricing is RunOutcome.DONE
    finally:
        await holder.close()

    done = await show_run(pool, OPERATOR, run.id)
    assert (done.state, done.error, done.events_examined, done.events_changed) == (
        "done", None, 6, 5,
    )  # fmt: skip
    assert (done.old_total, done.new_total) == ("0.001443", "0.005239")
    assert [m.events for m in done.models] == [4, 2]  # each event counted once in the result
    costs = await pool.fetch(
        "SELECT event_key, total_cost FROM usage_events WHERE project_id = $1 ORDER BY event_key",
        ledger.p,
    )
    assert [tuple(r) for r in costs] == [(c.key, c.new) for c in CALLS]
    assert await pool.fetchval("SELECT count(*) FROM usage_adjustments") == 5
    async with pool.acquire() as conn:
        await fold(conn)
        assert await rollups(conn) == await expected_rollups(conn)
    assert await windows(pool) == await brute_force(pool)
    assert (await windows(pool)).popitem()[1][0] == sum(c.new for c in CALLS)


async def test_a_batch_rolled_back_after_it_priced_its_events_counts_them_once(
    ledger: Ledger, settings: Settings
) -> None:
    """A deadlock can roll a batch back after it priced its events and added them to the run's
    per-model result (here at its adjustments: a session holds the unique key of one and then
    waits for that event's row, which the batch holds). The batch done again must count them
    once: the result it adds to is a copy, kept only when the batch commits."""
    pool = ledger.pool
    await record(pool, ledger.p, RECORDED_WITH, *(raw(c) for c in CALLS))
    event_id, at = await pool.fetchrow(
        "SELECT id, occurred_at FROM usage_events WHERE event_key = 'e2'"
    )
    run = await request_reprice(pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    blocker = await _session(settings)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute(
            "INSERT INTO usage_adjustments (project_id, run_id, event_id, occurred_at,"
            " old_status, new_status) VALUES ($1, $2, $3, $4, 'priced', 'priced')",
            ledger.p, run.id, event_id, at,
        )  # fmt: skip
        repricing = asyncio.create_task(execute_run(pool, run.id, TODAY, batch_size=10))
        await _waiters(pool, 1)  # the batch, at e2's adjustment
        locking = asyncio.create_task(blocker.execute(
            "SELECT 1 FROM usage_events WHERE id = $1 FOR UPDATE", event_id))  # fmt: skip
        async with asyncio.timeout(WAIT_S):
            await locking  # granted once the batch was rolled back
        await blocking.rollback()
        assert await repricing is RunOutcome.DONE
    finally:
        await blocker.close()
    done = await show_run(pool, OPERATOR, run.id)
    assert (done.state, done.events_examined, done.events_changed) == ("done", 6, 5)
    assert [(m.model, m.events, m.changed) for m in done.models] == [
        ("gpt-x", 4, 3), ("gpt-y", 2, 2),
    ]  # fmt: skip
    assert (done.old_total, done.new_total) == ("0.001443", "0.005239")
    assert [m.new_total for m in done.models] == ["0.004089", "0.00115"]
    assert await pool.fetchval("SELECT count(*) FROM usage_adjustments") == 5


async def test_a_run_whose_connection_the_database_ends_stays_running_and_is_resumed(
    ledger: Ledger,
) -> None:
    """The database ends the run's connection between two batches (a restart, an outage): the
    run stops with its first batch applied and stays `running` (not `failed`: the cron resumes
    only runs that are queued or running), and running it again, as the cron does, finishes it
    from its cursor, each event adjusted once and the rollups exact."""
    pool = ledger.pool
    await record(pool, ledger.p, RECORDED_WITH, *(raw(c) for c in CALLS[:4]))
    async with pool.acquire() as conn:
        await fold(conn)
    await record(pool, ledger.p, RECORDED_WITH, *(raw(c) for c in CALLS[4:]))
    run = await request_reprice(pool, OPERATOR, RepriceRequest(project="p", dry_run=False))

    async def outage(progress: RunProgress) -> None:
        if progress.examined != 2:
            return
        # the run's connection: the one that holds an advisory lock (its run's) between batches
        pids = await pool.fetch(
            "SELECT pg_terminate_backend(l.pid), l.pid FROM pg_locks AS l"
            " JOIN pg_database AS d ON d.oid = l.database"
            " WHERE d.datname = current_database() AND l.locktype = 'advisory'"
            " AND l.pid <> pg_backend_pid()"
        )
        assert len(pids) == 1
        async with asyncio.timeout(WAIT_S):
            while await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pids[0]["pid"]
            ):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the client sees its connection closed

    # the pool took the closed connection back (or, seen before that, the connection is gone)
    lost = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.InternalClientError)
    with pytest.raises(lost):
        await execute_run(pool, run.id, TODAY, batch_size=2, on_batch=outage)
    cut = await show_run(pool, OPERATOR, run.id)
    assert (cut.state, cut.error, cut.events_examined) == ("running", None, 2)

    async with pool.acquire() as conn:
        assert await unfinished_runs(conn) == [run.id]  # what the cron resumes
    assert await execute_run(pool, run.id, TODAY, batch_size=2) is RunOutcome.DONE
    done = await show_run(pool, OPERATOR, run.id)
    assert (done.state, done.events_examined, done.events_changed) == ("done", 6, 5)
    assert (done.old_total, done.new_total) == ("0.001443", "0.005239")
    assert await pool.fetchval("SELECT count(*) FROM usage_adjustments") == 5
    async with pool.acquire() as conn:
        await fold(conn)
        assert await rollups(conn) == await expected_rollups(conn)
        assert await conn.fetchval("SELECT sum(cost) FROM usage_rollups") == sum(
            c.new for c in CALLS
        )


async def test_a_runs_progress_adds_its_totals_exactly(ledger: Ledger) -> None:
    """The progress a run reports after each batch (the command's progress line) added the
    batches' totals with `+`: rounded to 28 digits, where the run's stored totals and its final
    summary are exact. A run resumed with totals of 40 digits shows them whole."""
    pool = ledger.pool
    await record(pool, ledger.p, RECORDED_WITH, *(raw(c) for c in CALLS))
    run = await request_reprice(pool, OPERATOR, RepriceRequest(project="p", dry_run=True))
    big = Decimal("5624444459.888426502603275369826993148498")
    await pool.execute(
        "UPDATE usage_reprice_runs SET old_total = $2, new_total = $2 WHERE id = $1", run.id, big
    )
    seen: list[RunProgress] = []
    assert await execute_run(pool, run.id, TODAY, batch_size=2, on_batch=seen.append) is (
        RunOutcome.DONE
    )
    done = await show_run(pool, OPERATOR, run.id)
    assert seen[-1].old_total == Decimal(done.old_total) == ADD(big, Decimal("0.001443"))
    assert seen[-1].new_total == Decimal(done.new_total) == ADD(big, Decimal("0.005239"))
