"""Race review: a reprice run working on a month while retention drops that month's partition, in
both orders. Each order is pinned with a lock held by another session and seen waiting in
`pg_locks`, never with sleeps.

What a finance reader needs of every order: the run ends `done` (never left `running`, never
`failed` for a month that went); the rollups move by exactly what the run reports (its new
total less its old one), so a correction to a month that went is either whole in both or in
neither; the months kept have their rollups equal to their events summed from scratch (nothing
counted twice, nothing lost); every adjustment the run wrote is of an event that, where it is
still kept, carries the new price.

The setting is the hourly maintenance at the turn of a month, with the retention it wrote down
unchanged (30 days): it then takes no lock that a reprice batch holds (a shortened retention
first waits for every transaction that holds the catalog's lock, the batch's included), and
checks the month's outbox, detaches it concurrently and drops it while the batch runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg
import msgspec

from aiserver.costs.catalog import Catalog
from aiserver.ledger.repricing.execution import Outcome as RunOutcome
from aiserver.ledger.repricing.execution import RunProgress, execute_run
from aiserver.ledger.repricing.runs import RepriceRequest, RepriceRun, request_reprice, show_run
from aiserver.ledger.usage.partitions import Maintenance, maintain_partitions, partition_name

from ..conftest import Settings
from ..support.reprice_rollups import expected_rollups, fold, rollups
from ..support.waits import WAIT_S
from .test_repricing import OPERATOR, Ledger, _row, ledger, record

__all__ = ["ledger"]  # the fixture: a migrated database with projects p and q, and its pool

SEPTEMBER: Final = datetime(2026, 9, 1, tzinfo=UTC)
OCTOBER: Final = datetime(2026, 10, 1, tzinfo=UTC)
NOVEMBER: Final = datetime(2026, 11, 1, tzinfo=UTC)
#: The month retention drops at `TURN` (30 days and a day of grace before it is November).
DROPPED: Final = partition_name(OCTOBER)
RETENTION: Final = 30
#: A maintenance at this time keeps October (and writes the retention down).
BEFORE_TURN: Final = datetime(2026, 11, 20, tzinfo=UTC)
#: The maintenance of the race: October is past the retention now.
TURN: Final = datetime(2026, 12, 3, 12, tzinfo=UTC)

#: What the events were recorded with, and the catalog of now: gpt-x three times dearer.
RECORDED_WITH: Final = Catalog.build(
    [_row(1, "gpt-x", SEPTEMBER, None, "1e-06", "2e-06")], aliases={}, version=7
)
TODAY: Final = Catalog.build(
    [_row(2, "gpt-x", SEPTEMBER, None, "3e-06", "6e-06")], aliases={}, version=8
)

#: (key, occurred_at, input tokens, output tokens, cost recorded, cost today), by hand.
# fmt: off
EVENTS: Final = [
    ("oct-1", "2026-10-10T10:15:00Z", 100, 10, Decimal("0.00012"), Decimal("0.00036")),
    ("oct-2", "2026-10-20T11:00:00Z", 1000, 100, Decimal("0.0012"), Decimal("0.0036")),
    ("nov-1", "2026-11-10T10:15:00Z", 200, 20, Decimal("0.00024"), Decimal("0.00072")),
    ("nov-2", "2026-11-25T12:00:00Z", 2000, 200, Decimal("0.0024"), Decimal("0.0072")),
]
# fmt: on
OCT_OLD: Final = EVENTS[0][4] + EVENTS[1][4]
OCT_NEW: Final = EVENTS[0][5] + EVENTS[1][5]
NOV_OLD: Final = EVENTS[2][4] + EVENTS[3][4]
NOV_NEW: Final = EVENTS[2][5] + EVENTS[3][5]


def _raw(key: str, at: str, input_tokens: int, output_tokens: int) -> bytes:
    return msgspec.json.encode({
        "id": key, "model": "gpt-x", "occurred_at": at, "tags": {"team": "a"},
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    })  # fmt: skip


async def _recorded(ledger: Ledger, *, fold_all: bool = True, days: int = RETENTION) -> None:
    """EVENTS in project p (folded unless told), and the retention (30 days unless told)
    written down by a maintenance that keeps October."""
    await record(ledger.pool, ledger.p, RECORDED_WITH, *(_raw(*e[:4]) for e in EVENTS), now=TURN)
    if fold_all:
        async with ledger.pool.acquire() as conn:
            await fold(conn)
    async with ledger.pool.acquire() as conn:
        before = await maintain_partitions(conn, retention_days=days, now=BEFORE_TURN)
    assert before.ran
    assert DROPPED not in before.dropped


async def _cost(pool: asyncpg.Pool, since: datetime | None = None) -> Decimal:
    """What the rollups bill project p in all (since: from that hour on)."""
    total: Decimal = await pool.fetchval(
        "SELECT coalesce(sum(cost), 0) FROM usage_rollups WHERE hour >= $1",
        since or datetime(1970, 1, 1, tzinfo=UTC),
    )
    return total


async def _finance_checks(pool: asyncpg.Pool, run: RepriceRun, rollups_before: Decimal) -> None:
    """What every order must leave: the run done; the rollups moved by what the run reports;
    the months kept summed exactly from their events; each adjustment of a kept event at its
    new cost, and one per change the run reports."""
    assert (run.state, run.error) == ("done", None)
    async with pool.acquire() as conn:
        await fold(conn)
        assert await _cost(pool) - rollups_before == Decimal(run.new_total) - Decimal(
            run.old_total
        ), "the rollups moved by other than the run reports"
        kept = await conn.fetchval("SELECT min(occurred_at) FROM usage_events")
        assert [r for r in await rollups(conn) if r[1] >= NOVEMBER] == [
            r for r in await expected_rollups(conn) if r[1] >= NOVEMBER
        ]
        if kept is not None and kept < NOVEMBER:  # October kept after all: it is summed too
            assert await rollups(conn) == await expected_rollups(conn)
        adjusted = await conn.fetch(
            "SELECT a.event_id, a.new_cost, e.total_cost FROM usage_adjustments a"
            " LEFT JOIN usage_events e ON e.project_id = a.project_id AND e.id = a.event_id"
            " WHERE a.run_id = $1",
            run.id,
        )
    assert len(adjusted) == run.events_changed
    stale = [(r["event_id"], r["new_cost"], r["total_cost"]) for r in adjusted
             if r["total_cost"] is not None and r["total_cost"] != r["new_cost"]]  # fmt: skip
    assert stale == [], "adjusted events kept at a price other than their adjustment's"


# -- waiting, as pg_locks shows it ---------------------------------------------------------------

_NOT_GRANTED: Final = """
    SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE NOT l.granted AND a.datname = current_database() AND a.query LIKE $1
      AND ($2::text IS NULL OR l.locktype = $2) AND ($3::text IS NULL OR l.mode = $3)
"""


async def _until(check: Callable[[], Awaitable[Any]], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_S):
            while not await check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


async def _waits(
    pool: asyncpg.Pool, query: str, locktype: str | None = None, mode: str | None = None
) -> None:
    """Until a session of this database running a statement that holds `query` waits for a
    lock (of that type and mode) that pg_locks shows not granted."""
    await _until(
        lambda: pool.fetchval(_NOT_GRANTED, f"%{query}%", locktype, mode),
        f"a statement {query!r} waiting for a lock",
    )


async def _detach_pending(pool: asyncpg.Pool, name: str) -> bool:
    pending: bool | None = await pool.fetchval(
        "SELECT i.inhdetachpending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'usage_events'::regclass AND c.relname = $1",
        name,
    )
    return bool(pending)


async def _table_state(pool: asyncpg.Pool, name: str) -> str:
    state: str = await pool.fetchval(
        """
        SELECT CASE WHEN c.oid IS NULL THEN 'gone' WHEN i.inhrelid IS NULL THEN 'detached'
                    WHEN i.inhdetachpending THEN 'detaching' ELSE 'attached' END
        FROM (SELECT $1::text AS name) n
        LEFT JOIN pg_class c ON c.relname = n.name
        LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
        """,
        name,
    )
    return state


#: The batch's statement that adds its corrections to the rollups: after it locked its events,
#: before it updates them.
_ROLLUP_UPSERT: Final = "INSERT INTO usage_rollups AS r"
#: DETACH ... CONCURRENTLY, between its two transactions: it waits for every transaction that
#: was using `usage_events` (on their virtual transaction ids).
_DETACH: Final = "DETACH PARTITION"


async def _session(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(settings.core.database_url)


async def _maintain(settings: Settings, *, now: datetime, days: int = RETENTION, **kw: Any) -> Any:
    conn = await _session(settings)
    try:
        return await maintain_partitions(conn, retention_days=days, now=now, **kw)
    finally:
        await conn.close()


# -- the reprice first: retention comes while a batch holds the month's events ---------------------


async def _batch_holding_october(
    ledger: Ledger, settings: Settings
) -> tuple[RepriceRun, asyncio.Task[RunOutcome], asyncpg.Connection, Any]:
    """A run whose one batch (October and November) has locked its events and waits, before it
    writes them, for the rollup row that another session holds."""
    pool = ledger.pool
    run = await request_reprice(pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    holder = await _session(settings)
    holding = holder.transaction()
    await holding.start()
    await holder.execute("SELECT 1 FROM usage_rollups WHERE project_id = $1 FOR UPDATE", ledger.p)
    repricing = asyncio.create_task(execute_run(pool, run.id, TODAY, batch_size=10))
    await _waits(pool, _ROLLUP_UPSERT, "transactionid")
    return run, repricing, holder, holding


async def _let_go(holding: Any, repricing: asyncio.Task[RunOutcome]) -> None:
    """End the other session's transaction that holds the batch, and see the run end `done`."""
    await holding.rollback()
    async with asyncio.timeout(WAIT_S):
        assert await repricing is RunOutcome.DONE


async def test_a_month_detached_while_a_batch_holds_its_events_is_dropped_with_the_run_exact(
    ledger: Ledger, settings: Settings
) -> None:
    """The batch has read and locked October's and November's events; the maintenance finds
    October folded, detaches it concurrently (its first transaction commits) and waits for the
    batch. The batch then goes on: its UPDATE no longer sees October's events, so it rolls
    back and is done again with November alone (before, it kept October's corrections in the
    rollups with the events unchanged). The run ends `done`, October is dropped, the rollups
    moved by what the run reports, November exact."""
    pool = ledger.pool
    await _recorded(ledger)
    before = await _cost(pool)
    assert before == OCT_OLD + NOV_OLD
    run, repricing, holder, holding = await _batch_holding_october(ledger, settings)
    try:
        maintaining = asyncio.create_task(_maintain(settings, now=TURN))
        await _waits(pool, _DETACH, "virtualxid")  # its first transaction committed; it waits
        assert await _detach_pending(pool, DROPPED)
        assert not repricing.done()
        await _let_go(holding, repricing)
        async with asyncio.timeout(WAIT_S):
            maintained: Maintenance = await maintaining
    finally:
        await holder.close()
    assert DROPPED in maintained.dropped
    assert await _table_state(pool, DROPPED) == "gone"
    done = await show_run(pool, OPERATOR, run.id)
    await _finance_checks(pool, done, before)
    # the batch, done again once its UPDATE missed October's events, repriced November alone:
    # October's rollups, which outlive its events, keep what they were billed at, as the run
    # reports it (no October event examined, none adjusted)
    assert (done.events_examined, done.events_changed) == (2, 2)
    assert (Decimal(done.old_total), Decimal(done.new_total)) == (NOV_OLD, NOV_NEW)
    assert await _cost(pool, NOVEMBER) == NOV_NEW
    assert await _cost(pool) == OCT_OLD + NOV_NEW


async def test_a_month_left_detaching_under_a_batch_and_kept_again_is_exact(
    ledger: Ledger, settings: Settings
) -> None:
    """As above, but the maintenance's detach also waits for a reader, and is cut off there (its
    job's timeout, a shutdown) after the batch committed: October is left pending detach. Then
    USAGE_RETENTION_DAYS is raised and the next maintenance attaches October again, its events
    as they are. They must be what the rollups and the run's adjustments say they are: the
    batch, whose statements after the detach's first transaction no longer see the month,
    must not have written October's corrections to the rollups while its UPDATE of October's
    events found none of them."""
    pool = ledger.pool
    await _recorded(ledger)
    before = await _cost(pool)
    reader = await _session(settings)
    maintainer = await _session(settings)
    run, repricing, holder, holding = await _batch_holding_october(ledger, settings)
    try:
        reading = reader.transaction()
        await reading.start()
        assert await reader.fetchval("SELECT count(*) FROM usage_events") == 4
        maintaining = asyncio.create_task(
            maintain_partitions(maintainer, retention_days=RETENTION, now=TURN)
        )
        await _waits(pool, _DETACH, "virtualxid")
        assert await _detach_pending(pool, DROPPED)
        await _let_go(holding, repricing)
        assert not maintaining.done()  # its detach still waits, for the reader
        await _waits(pool, _DETACH, "virtualxid")
        assert await pool.fetchval("SELECT pg_cancel_backend($1)", maintainer.get_server_pid())
        try:
            await asyncio.wait_for(maintaining, WAIT_S)
        except asyncpg.QueryCanceledError:
            pass
        else:
            raise AssertionError("the maintenance was not cut off in its detach")
        await reading.rollback()
    finally:
        await holder.close()
        await reader.close()
        await maintainer.close()
    assert await _table_state(pool, DROPPED) == "detaching"
    kept = await _maintain(settings, now=TURN, days=400)
    assert DROPPED in kept.created
    assert kept.dropped == ()
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 4
    done = await show_run(pool, OPERATOR, run.id)
    await _finance_checks(pool, done, before)
    # and a second run over the months kept corrects what the first did not, once
    between = await _cost(pool)
    again = await request_reprice(pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    assert await execute_run(pool, again.id, TODAY) is RunOutcome.DONE
    second = await show_run(pool, OPERATOR, again.id)
    await _finance_checks(pool, second, between)
    assert second.events_examined == 4
    assert second.events_changed == 4 - done.events_changed
    assert await _cost(pool) == OCT_NEW + NOV_NEW


async def test_a_shortened_retention_waits_for_the_batch_then_drops_the_month_it_repriced(
    ledger: Ledger, settings: Settings
) -> None:
    """The retention written down was 400 days and is now 30: the maintenance first waits for
    every transaction that holds the catalog's lock (an ingest's, the batch's), so it checks
    and detaches October only once the batch committed. October goes with its corrections in
    the rollups, as the run reports them."""
    pool = ledger.pool
    await _recorded(ledger, days=400)
    before = await _cost(pool)
    run, repricing, holder, holding = await _batch_holding_october(ledger, settings)
    try:
        maintaining = asyncio.create_task(_maintain(settings, now=TURN))
        await _waits(pool, "SELECT pg_advisory_xact_lock(", "advisory", "ExclusiveLock")
        assert not await _detach_pending(pool, DROPPED)
        await _let_go(holding, repricing)
        async with asyncio.timeout(WAIT_S):
            maintained: Maintenance = await maintaining
    finally:
        await holder.close()
    assert DROPPED in maintained.dropped
    done = await show_run(pool, OPERATOR, run.id)
    assert (done.events_examined, done.events_changed) == (4, 4)
    await _finance_checks(pool, done, before)
    assert await _cost(pool) == OCT_NEW + NOV_NEW


async def test_a_drop_in_one_statement_gives_way_to_a_batch_and_goes_at_the_next_run(
    ledger: Ledger, settings: Settings
) -> None:
    """Where DETACH ... CONCURRENTLY is missing (Citus), the drop needs `usage_events` alone:
    it waits for the batch no longer than its lock timeout, is put off, and the run is not held
    up; the next maintenance drops the month."""
    pool = ledger.pool
    await _recorded(ledger)
    before = await _cost(pool)
    run, repricing, holder, holding = await _batch_holding_october(ledger, settings)
    try:
        maintaining = asyncio.create_task(_maintain(settings, now=TURN, concurrently=False))
        await _waits(pool, "DROP TABLE", "relation", "AccessExclusiveLock")
        async with asyncio.timeout(WAIT_S):
            maintained: Maintenance = await maintaining
        assert not repricing.done()
        await _let_go(holding, repricing)
    finally:
        await holder.close()
    assert maintained.postponed == (DROPPED,)
    assert DROPPED not in maintained.dropped
    done = await show_run(pool, OPERATOR, run.id)
    assert (done.events_examined, done.events_changed) == (4, 4)
    await _finance_checks(pool, done, before)
    again = await _maintain(settings, now=TURN, concurrently=False)
    assert again.dropped == (DROPPED,)
    assert await _cost(pool) == OCT_NEW + NOV_NEW  # the rollups outlive the events, repriced


async def test_a_month_whose_corrections_wait_for_the_fold_is_kept_until_they_are_folded(
    ledger: Ledger, settings: Settings
) -> None:
    """October's events are not folded yet: the batch gives their outbox rows new ids, and
    waits (at an adjustment another session holds) before it commits. The maintenance sees
    October's outbox rows and puts the drop off, without waiting for the batch; the next one
    after the fold drops it, its events counted once, at their new price."""
    pool = ledger.pool
    await _recorded(ledger, fold_all=False)
    run = await request_reprice(pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    oct_1 = await pool.fetchrow(
        "SELECT id, occurred_at FROM usage_events WHERE event_key = 'oct-1'"
    )
    holder = await _session(settings)
    try:
        holding = holder.transaction()
        await holding.start()
        await holder.execute(
            "INSERT INTO usage_adjustments (project_id, run_id, event_id, occurred_at,"
            " old_status, new_status) VALUES ($1, $2, $3, $4, 'priced', 'priced')",
            ledger.p, run.id, oct_1["id"], oct_1["occurred_at"],
        )  # fmt: skip
        repricing = asyncio.create_task(execute_run(pool, run.id, TODAY, batch_size=10))
        await _waits(pool, "INSERT INTO usage_adjustments", "transactionid")
        async with asyncio.timeout(WAIT_S):
            first = await _maintain(settings, now=TURN)  # not held up by the batch
        assert not repricing.done()
        await _let_go(holding, repricing)
    finally:
        await holder.close()
    assert first.unfolded == (DROPPED,)
    assert DROPPED not in first.dropped
    second = await _maintain(settings, now=TURN)
    assert second.unfolded == (DROPPED,)  # the corrections are not folded yet
    done = await show_run(pool, OPERATOR, run.id)
    # nothing was folded before: the rollups go from none to every event at its new price, which
    # is what they would have moved by from the events' recorded costs
    await _finance_checks(pool, done, OCT_OLD + NOV_OLD)
    third = await _maintain(settings, now=TURN)
    assert third.dropped == (DROPPED,)
    assert await _cost(pool) == OCT_NEW + NOV_NEW


# -- retention first: the month goes while a run is between batches, or before it reaches it ------


async def test_a_month_dropped_between_two_batches_of_a_run_leaves_its_corrections_in_rollups(
    ledger: Ledger, settings: Settings
) -> None:
    """The run's first batch repriced October and committed; between batches, the run holds no
    lock on `usage_events` (pg_locks shows its session with none), so the maintenance drops
    October at once. The run goes on from its cursor (in the month that went) to November and
    ends `done`: October's corrections stay in the rollups, as the run reports them."""
    pool = ledger.pool
    await _recorded(ledger)
    before = await _cost(pool)
    run = await request_reprice(pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    dropped: list[Maintenance] = []

    async def between(progress: RunProgress) -> None:
        if progress.examined != 2:
            return
        held = await pool.fetch(
            "SELECT l.locktype, l.relation::regclass::text AS relation FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE a.datname = current_database() AND l.pid <> pg_backend_pid()"
            " AND l.locktype <> 'virtualxid'"
        )
        assert [r["locktype"] for r in held] == ["advisory"], held  # the run's own lock only
        async with asyncio.timeout(WAIT_S):
            dropped.append(await _maintain(settings, now=TURN))

    assert await execute_run(pool, run.id, TODAY, batch_size=2, on_batch=between) is (
        RunOutcome.DONE
    )
    assert DROPPED in dropped[0].dropped
    done = await show_run(pool, OPERATOR, run.id)
    assert (done.events_examined, done.events_changed) == (4, 4)
    assert (Decimal(done.old_total), Decimal(done.new_total)) == (
        OCT_OLD + NOV_OLD, OCT_NEW + NOV_NEW,
    )  # fmt: skip
    await _finance_checks(pool, done, before)
    assert await _cost(pool) == OCT_NEW + NOV_NEW


async def test_a_run_started_while_a_month_is_being_detached_leaves_it_and_is_not_held_up(
    ledger: Ledger, settings: Settings
) -> None:
    """The maintenance detached October (its first transaction committed) and waits for a
    reader. A run that starts then does not see October, is not held up by the detach (which
    pg_locks shows waiting all along) and ends `done` with November alone: October's events
    are not repriced, and its rollups keep what they were billed at, as the run reports."""
    pool = ledger.pool
    await _recorded(ledger)
    before = await _cost(pool)
    reader = await _session(settings)
    try:
        async with reader.transaction():
            assert await reader.fetchval("SELECT count(*) FROM usage_events") == 4
            maintaining = asyncio.create_task(_maintain(settings, now=TURN))
            await _waits(pool, _DETACH, "virtualxid")
            run = await request_reprice(pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
            async with asyncio.timeout(WAIT_S):
                assert await execute_run(pool, run.id, TODAY, batch_size=1) is RunOutcome.DONE
            await _waits(pool, _DETACH, "virtualxid")  # still waiting for the reader
            assert not maintaining.done()
        async with asyncio.timeout(WAIT_S):
            assert DROPPED in (await maintaining).dropped
    finally:
        await reader.close()
    done = await show_run(pool, OPERATOR, run.id)
    assert (done.events_examined, done.events_changed) == (2, 2)
    assert (Decimal(done.old_total), Decimal(done.new_total)) == (NOV_OLD, NOV_NEW)
    await _finance_checks(pool, done, before)
    assert await _cost(pool) == OCT_OLD + NOV_NEW
