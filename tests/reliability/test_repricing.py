"""A reprice killed (SIGKILL) in the middle of a run, then run again: every batch that committed
stays, nothing of the one cut off does, and the rerun finishes the run from its cursor. Each
event is adjusted exactly once and the totals come out exact.

The run is stopped at a known place: the test holds the row lock of one event, so the batch
that holds it waits there while the batches before it have committed.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import asyncpg
import msgspec
import pytest

from aiserver.costs.catalog import Catalog
from aiserver.costs.refresh import Outcome, refresh_catalog
from aiserver.ledger.access import Access
from aiserver.ledger.repricing.runs import RepriceRequest, request_reprice
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.ingest import UsageRecorder

from ..conftest import Settings, child_env, replace_settings
from ..support.catalog import document, model_entry
from ..support.processes import kill, run_module, taskrunners
from ..support.reprice_rollups import expected_rollups, fold, rollups
from ..support.upstream import Upstream
from .harness import advisory_locks, errors_logged, eventually, taskrunner_env

pytestmark = pytest.mark.slow

EVENTS: Final = 400
BATCH: Final = 20
BLOCKED_AT: Final = 250  # the event (in run order) whose lock the test holds
#: what the events were recorded with: gpt-test-000 at half today's prices
OLD_IN, OLD_OUT = Decimal("5e-07"), Decimal("1e-06")
NEW_IN, NEW_OUT = Decimal("1e-06"), Decimal("2e-06")  # today's, in the database

WAITING: Final = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()
"""


def recorded_with() -> Catalog:
    row = {
        "id": 1, "source": "old", "provider": "openai", "model": "gpt-test-000", "mode": "chat",
        "valid_from": datetime(2020, 1, 1, tzinfo=UTC), "valid_to": None,
        "entry": {"litellm_provider": "openai", "mode": "chat",
                  "input_cost_per_token": OLD_IN, "output_cost_per_token": OLD_OUT},
    }  # fmt: skip
    return Catalog.build([row], aliases={}, version=1)


def usage(i: int) -> tuple[int, int]:
    return 100 + i, i % 50


@pytest.fixture
async def pool(settings: Settings, upstream: Upstream) -> AsyncIterator[asyncpg.Pool]:
    cfg = replace_settings(settings, model_cost_source_url=upstream.url)
    upstream.serve(document({"gpt-test-000": model_entry(0)}))  # 1e-06 in, 2e-06 out
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    created = await asyncpg.create_pool(settings.core.database_url, min_size=1, max_size=4)
    try:
        yield created
    finally:
        await created.close()


async def record(
    pool: asyncpg.Pool, project_id: int, numbers: range, now: datetime, span: int = EVENTS
) -> None:
    raws = [
        msgspec.json.encode(
            {
                "id": f"e{i}",
                "model": "gpt-test-000",
                "tags": {"team": f"t{i % 3}"},
                "occurred_at": (now - timedelta(minutes=span - i)).isoformat(),
                "usage": {"input_tokens": usage(i)[0], "output_tokens": usage(i)[1]},
            }
        )
        for i in numbers
    ]
    report = await UsageRecorder(LedgerSettings()).record(
        pool, project_id, decode_items(raws), catalog=recorded_with(), now=now
    )
    assert report.recorded == len(raws)


async def test_a_reprice_killed_mid_run_keeps_whole_batches_and_a_rerun_finishes_it_exactly(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    now = datetime.now(UTC)
    p = await pool.fetchval(
        "INSERT INTO projects (slug, name, rollup_tags) VALUES ('p', 'P', '{team}') RETURNING id"
    )
    await record(pool, p, range(EVENTS // 2), now)
    async with pool.acquire() as conn:
        await fold(conn)  # half folded, half still in the outbox
    await record(pool, p, range(EVENTS // 2, EVENTS), now)
    run = await request_reprice(pool, Access.operator(), RepriceRequest(project="p", dry_run=False))
    env = child_env(settings)
    args = ("reprice", "--resume", str(run.id), "--batch-size", str(BATCH), "--no-progress")

    blocker = await asyncpg.connect(settings.core.database_url)
    blocked = await blocker.fetchval(
        "SELECT id FROM usage_events ORDER BY occurred_at, id OFFSET $1 LIMIT 1", BLOCKED_AT
    )
    transaction = blocker.transaction()
    await transaction.start()
    await blocker.execute("SELECT 1 FROM usage_events WHERE id = $1 FOR UPDATE", blocked)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiserver.ledger.cli", *args, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await eventually(lambda: pool.fetchval(WAITING), timeout=60)
        proc.kill()
        await proc.wait()
    finally:
        await kill(proc)
        await transaction.rollback()
        await blocker.close()

    committed = BLOCKED_AT // BATCH * BATCH  # the batches before the blocked one: 240 events
    cut = await pool.fetchrow(
        "SELECT state, events_examined, events_changed FROM usage_reprice_runs WHERE id = $1",
        run.id,
    )
    assert tuple(cut) == ("running", committed, committed)
    assert await pool.fetchval("SELECT count(*) FROM usage_adjustments") == committed
    repriced = await pool.fetchval(
        "SELECT count(*) FROM usage_events"
        " WHERE total_cost = input_tokens * $1::numeric + output_tokens * $2::numeric",
        NEW_IN,
        NEW_OUT,
    )
    assert repriced == committed

    # the killed process's session ends once its lock wait does: then the run is free
    await eventually(lambda: _no_advisory_lock(pool), timeout=30)
    status, out, err = await run_module("aiserver.ledger.cli", env, *args, "--json")
    assert status == 0, err
    finished: dict[str, Any] = msgspec.json.decode(out)

    old = sum((usage(i)[0] * OLD_IN + usage(i)[1] * OLD_OUT for i in range(EVENTS)), Decimal(0))
    new = sum((usage(i)[0] * NEW_IN + usage(i)[1] * NEW_OUT for i in range(EVENTS)), Decimal(0))
    assert (finished["state"], finished["events_examined"], finished["events_changed"]) == (
        "done", EVENTS, EVENTS,
    )  # fmt: skip
    assert (Decimal(finished["old_total"]), Decimal(finished["new_total"])) == (old, new)
    adjusted = await pool.fetchrow(
        "SELECT count(*), count(DISTINCT event_id), sum(new_cost), sum(old_cost)"
        " FROM usage_adjustments WHERE run_id = $1",
        run.id,
    )
    assert tuple(adjusted) == (EVENTS, EVENTS, new, old)
    assert await pool.fetchval("SELECT sum(total_cost) FROM usage_events") == new
    async with pool.acquire() as conn:
        await fold(conn)
        assert await rollups(conn) == await expected_rollups(conn)
        assert await conn.fetchval("SELECT sum(cost) FROM usage_rollups") == new


async def _no_advisory_lock(pool: asyncpg.Pool) -> bool:
    # this database's advisory locks only: other tests, in parallel, hold their own
    held: int = await pool.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return held == 0


# -- SIGTERM to a task runner in the middle of a run ---------------------------------------------

#: More events than the task runner's batch (500): its first batch commits, the second waits.
RUNNER_EVENTS: Final = 1_200
RUNNER_BLOCKED_AT: Final = 700
RUNNER_BATCH: Final = 500


async def test_sigterm_to_a_task_runner_mid_reprice_keeps_whole_batches_and_a_restart_finishes(
    settings: Settings,
    pool: asyncpg.Pool,
    upstream: Upstream,
    tmp_path: Path,
    record_property: Any,
) -> None:
    now = datetime.now(UTC)
    p = await pool.fetchval(
        "INSERT INTO projects (slug, name, rollup_tags) VALUES ('p', 'P', '{team}') RETURNING id"
    )
    await record(pool, p, range(RUNNER_EVENTS), now, span=RUNNER_EVENTS)
    # queued, not enqueued: the runner's reprice cron starts it at start-up
    run = await request_reprice(pool, Access.operator(), RepriceRequest(project="p", dry_run=False))
    env = taskrunner_env(settings.core.database_url, upstream_url=upstream.url)
    loop = asyncio.get_running_loop()

    blocker = await asyncpg.connect(settings.core.database_url)
    blocked = await blocker.fetchval(
        "SELECT id FROM usage_events ORDER BY occurred_at, id OFFSET $1 LIMIT 1", RUNNER_BLOCKED_AT
    )
    transaction = blocker.transaction()
    await transaction.start()
    await blocker.execute("SELECT 1 FROM usage_events WHERE id = $1 FOR UPDATE", blocked)
    try:
        async with taskrunners(1, env, tmp_path) as (runner,):
            await eventually(lambda: pool.fetchval(WAITING), timeout=60)
            signalled = loop.time()
            runner.proc.send_signal(signal.SIGTERM)
            # the batch waits past the runner's grace for a job (25 s): it is cancelled
            exit_code = await asyncio.wait_for(runner.proc.wait(), 60)
            exited_s = loop.time() - signalled
    finally:
        await transaction.rollback()
        await blocker.close()
    assert exit_code == 0, runner.log.read_text()
    assert errors_logged(runner.log) == []
    record_property("exit_code", exit_code)
    record_property("exited_after_signal_s", round(exited_s, 1))

    # the cancelled batch's session ends once its lock wait does: then nothing of it is left
    url = settings.core.database_url
    await eventually(lambda: _no_lock_in(url), timeout=30)
    cut = await pool.fetchrow(
        "SELECT state, events_examined, events_changed FROM usage_reprice_runs WHERE id = $1",
        run.id,
    )
    assert tuple(cut) == ("running", RUNNER_BATCH, RUNNER_BATCH)  # the first batch, whole
    adjusted = await pool.fetchrow(
        "SELECT count(*), count(DISTINCT event_id) FROM usage_adjustments WHERE run_id = $1",
        run.id,
    )
    assert tuple(adjusted) == (RUNNER_BATCH, RUNNER_BATCH)
    repriced = await pool.fetchval(
        "SELECT count(*) FROM usage_events"
        " WHERE total_cost = input_tokens * $1::numeric + output_tokens * $2::numeric",
        NEW_IN,
        NEW_OUT,
    )
    assert repriced == RUNNER_BATCH

    # a restarted runner resumes the run from its cursor and finishes it
    (tmp_path / "again").mkdir()
    async with taskrunners(1, env, tmp_path / "again") as (again,):
        await eventually(lambda: _state(pool, run.id, "done"), timeout=60)
        assert await again.terminate() == 0
    assert errors_logged(again.log) == []
    numbers = range(RUNNER_EVENTS)
    old = sum((usage(i)[0] * OLD_IN + usage(i)[1] * OLD_OUT for i in numbers), Decimal(0))
    new = sum((usage(i)[0] * NEW_IN + usage(i)[1] * NEW_OUT for i in numbers), Decimal(0))
    done = await pool.fetchrow(
        "SELECT events_examined, events_changed, old_total, new_total FROM usage_reprice_runs"
        " WHERE id = $1",
        run.id,
    )
    assert tuple(done) == (RUNNER_EVENTS, RUNNER_EVENTS, old, new)
    adjusted = await pool.fetchrow(
        "SELECT count(*), count(DISTINCT event_id), sum(new_cost), sum(old_cost)"
        " FROM usage_adjustments WHERE run_id = $1",
        run.id,
    )
    assert tuple(adjusted) == (RUNNER_EVENTS, RUNNER_EVENTS, new, old)
    assert await pool.fetchval("SELECT sum(total_cost) FROM usage_events") == new
    async with pool.acquire() as conn:
        await fold(conn)
        assert await rollups(conn) == await expected_rollups(conn)


async def _no_lock_in(url: str) -> bool:
    return await advisory_locks(url) == 0


async def _state(pool: asyncpg.Pool, run_id: int, state: str) -> bool:
    found = await pool.fetchval("SELECT state FROM usage_reprice_runs WHERE id = $1", run_id)
    return bool(found == state)
