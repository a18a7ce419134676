"""Repricing against what happens around it: a run that loaded its catalog before a catalog
change, and two runs at once on an event that is still in the outbox. Each ends with the
rollups equal to every event summed from scratch."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import msgspec

from aiserver.core_db.locks import advisory_unlock, try_advisory_lock
from aiserver.costs.catalog import Catalog, load_catalog
from aiserver.costs.source import DEFAULT_SOURCE
from aiserver.costs.store.metadata import bump_catalog_version, lock_catalog_version
from aiserver.costs.store.overrides import replace_override
from aiserver.ledger.repricing.automatic import reprice_after_catalog_change
from aiserver.ledger.repricing.execution import Outcome as RunOutcome
from aiserver.ledger.repricing.execution import execute_run, lock_name
from aiserver.ledger.repricing.runs import RepriceRequest, request_reprice, show_run

from ..conftest import Settings, child_env
from ..support.processes import run_module
from ..support.reprice_rollups import expected_rollups, fold, rollups
from ..support.waits import WAIT_S
from .test_repricing import (
    CALLS,
    OPERATOR,
    RECORDED_WITH,
    T0,
    T1,
    TODAY,
    Ledger,
    _row,
    catalogued,
    ledger,
    raw,
    record,
)

__all__ = ["catalogued", "ledger"]  # the fixtures, used by name

#: A catalog newer than TODAY: gpt-x's price from T1 corrected once more, its output price
#: unknown now (its events are partially priced: another rollup row).
_INPUT_ONLY = _row(3, "gpt-x", T1, None, "4e-06", "0")
del _INPUT_ONLY["entry"]["output_cost_per_token"]
NEWER = Catalog.build(
    [_row(1, "gpt-x", T0, T1, "1e-06", "2e-06"), _INPUT_ONLY], aliases={}, version=9
)


async def test_a_run_with_an_older_catalog_never_takes_back_what_a_newer_one_priced(
    catalogued: Ledger,
) -> None:
    """A run loaded its catalog (say a long run over months, or the command line), then an
    override made a model known and the automatic reprice priced its events. When the run
    reaches those events, it prices them with the catalog of now, as ingest would: they stay
    priced (before, the run put them back to unpriced with its old catalog, and no automatic
    reprice would ever look at them again for that catalog version)."""
    pool = catalogued.pool
    async with pool.acquire() as conn:
        before = await load_catalog(conn)
    call = {"id": "mine", "model": "my-model", "provider": "acme",
            "usage": {"input_tokens": 1000, "output_tokens": 100}}  # fmt: skip
    await record(pool, catalogued.p, before, msgspec.json.encode(call), now=datetime.now(UTC))
    async with pool.acquire() as conn:
        await fold(conn)

    async with pool.acquire() as conn, conn.transaction():  # what PUT /v1/overrides does
        await lock_catalog_version(conn, DEFAULT_SOURCE)
        await replace_override(
            conn, provider="acme", model="my-model", reason="new model",
            prices={"input_cost_per_token": Decimal("1e-05"),
                    "output_cost_per_token": Decimal("3e-05")},
        )  # fmt: skip
        await bump_catalog_version(conn, DEFAULT_SOURCE)
    assert (await reprice_after_catalog_change(pool)).outcome == "repriced"
    priced = ("priced", Decimal("0.013"))  # 1000 * 1e-05 + 100 * 3e-05
    event = "SELECT status, total_cost FROM usage_events WHERE event_key = 'mine'"
    assert tuple(await pool.fetchrow(event)) == priced

    # the run that loaded its catalog before the override now gets to the event
    long_run = await request_reprice(pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    assert await execute_run(pool, long_run.id, before) is RunOutcome.DONE

    assert tuple(await pool.fetchrow(event)) == priced
    done = await show_run(pool, OPERATOR, long_run.id)
    assert (done.events_examined, done.events_changed, done.new_total) == (1, 0, "0.013")
    assert await pool.fetchval("SELECT count(*) FROM usage_adjustments") == 1  # the automatic
    async with pool.acquire() as conn:
        await fold(conn)
        assert await rollups(conn) == await expected_rollups(conn)


async def _lock_waiters(pool: asyncpg.Pool, count: int) -> None:
    """Until `count` sessions of this database wait for a lock."""
    async with asyncio.timeout(WAIT_S):
        while (
            await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            < count
        ):
            await asyncio.sleep(0.01)


async def test_two_runs_at_once_on_an_unfolded_event_leave_its_rollups_to_the_fold(
    ledger: Ledger, settings: Settings
) -> None:
    """Run A reprices e2, still in the outbox: it gives e2's outbox row a new id and, before its
    COMMIT, run B (a newer catalog) waits for that row. When A commits, B finds the old row
    deleted; the event is not folded all the same (its new row waits in the outbox), so B must
    leave the rollups to the fold. (Before, B took e2 for folded and moved it in the rollups,
    where it never was: once folded, it was counted twice.)"""
    e2 = CALLS[1]  # 0.00012 then; 0.00036 with TODAY; 100 * 4e-06 with NEWER
    await record(ledger.pool, ledger.p, RECORDED_WITH, raw(e2))
    event_id, at = await ledger.pool.fetchrow("SELECT id, occurred_at FROM usage_events")
    run_a = await request_reprice(ledger.pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    run_b = await request_reprice(ledger.pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    blocker = await asyncpg.connect(settings.core.database_url)
    try:
        # A's adjustment of e2 waits for this one (its unique key), after A requeued the row
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute(
            "INSERT INTO usage_adjustments (project_id, run_id, event_id, occurred_at,"
            " old_status, new_status) VALUES ($1, $2, $3, $4, 'priced', 'priced')",
            ledger.p, run_a.id, event_id, at,
        )  # fmt: skip
        a = asyncio.create_task(execute_run(ledger.pool, run_a.id, TODAY))
        await _lock_waiters(ledger.pool, 1)
        b = asyncio.create_task(execute_run(ledger.pool, run_b.id, NEWER))
        await _lock_waiters(ledger.pool, 2)  # B, at e2's outbox row that A deleted
        await blocking.rollback()
        assert await a is RunOutcome.DONE
        assert await b is RunOutcome.DONE
    finally:
        await blocker.close()
    assert tuple(await ledger.pool.fetchrow("SELECT status, total_cost FROM usage_events")) == (
        "partially_priced", Decimal("0.0004"),
    )  # fmt: skip
    async with ledger.pool.acquire() as conn:
        await fold(conn)
        assert await rollups(conn) == await expected_rollups(conn)
        assert await conn.fetchval("SELECT sum(cost) FROM usage_rollups") == Decimal("0.0004")


# -- the command line -----------------------------------------------------------------------


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    return await run_module("aiserver.ledger.cli", child_env(settings), "reprice", *args)


async def test_the_command_line_refuses_a_run_id_that_cannot_be_one_as_a_wrong_argument(
    ledger: Ledger, settings: Settings
) -> None:
    """Exit 2 and what is wrong, not a traceback and "run ... stopped; finish it: --resume"
    of a run that cannot exist."""
    for run_id in ("99999999999999999999", "0", "-3"):
        status, out, err = await cli(settings, "--resume", run_id)
        assert (status, out) == (2, ""), err
        assert "Traceback" not in err
        assert f"argument --resume: a run id, 1 to 9223372036854775807: {run_id!r}" in err


async def test_the_command_line_refuses_a_filter_or_dry_run_with_resume(
    ledger: Ledger, settings: Settings
) -> None:
    """A run resumed keeps its own filter and dry run: `--resume RUN --dry-run` would apply an
    applied run while it says "dry run" (before, the flags were ignored without a word)."""
    await record(ledger.pool, ledger.p, RECORDED_WITH, raw(CALLS[1]))
    run = await request_reprice(ledger.pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    for extra in (["--dry-run"], ["--model", "gpt-x"], ["--from", "2026-11-01"]):
        status, out, err = await cli(settings, "--resume", str(run.id), *extra)
        assert (status, out) == (2, ""), err
        assert f"{extra[0]} is not allowed with --resume" in err
    assert (await show_run(ledger.pool, OPERATOR, run.id)).state == "queued"


async def test_the_command_line_says_when_another_process_works_on_the_run(
    ledger: Ledger, settings: Settings
) -> None:
    run = await request_reprice(ledger.pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    async with ledger.pool.acquire() as conn:
        assert await try_advisory_lock(conn, lock_name(run.id))  # the task runner, say
        try:
            status, out, err = await cli(settings, "--resume", str(run.id))
        finally:
            await advisory_unlock(conn, lock_name(run.id))
    assert status == 1, err
    assert f"run {run.id}: another process is working on it" in err
    assert f"reprice run {run.id} (applied) of p: queued" in out


async def test_the_command_line_writes_its_progress_and_no_log_lines_unless_asked(
    ledger: Ledger, settings: Settings
) -> None:
    """stderr holds the command's own lines; the log lines of the run's work (JSON, with a pipe)
    come only with LOG_LEVEL set. Before, `reprice run started` and `done` came around them."""
    await record(ledger.pool, ledger.p, RECORDED_WITH, raw(CALLS[1]))
    env = {k: v for k, v in child_env(settings).items() if k != "LOG_LEVEL"}
    status, _, err = await run_module("aiserver.ledger.cli", env, "reprice", "--project", "p")
    assert status == 0, err
    lines = err.splitlines()
    assert lines
    assert all(line.startswith("aiserver-ledger reprice: run ") for line in lines), err
    env["LOG_LEVEL"] = "INFO"
    status, _, err = await run_module("aiserver.ledger.cli", env, "reprice", "--project", "p")
    assert status == 0, err
    assert '"event": "reprice run started"' in err


async def test_the_command_lines_help_says_its_exit_statuses(settings: Settings) -> None:
    status, out, err = await cli(settings, "--help")
    assert status == 0, err
    assert "exit status: 0 the run ran to its end; 1 it could not run" in out
    assert "2 wrong arguments" in out
