"""Folding under stress: several folders on one outbox while events keep coming, a folder
killed in the middle of its transaction, and the task runner's fold and rebuild jobs.

Each test ends on the same check: the rollups equal the brute-force sums of the stored events
(exact), and the outbox is empty."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg
import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, func
from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app
from aiserver.ledger.jobs import FOLD_TASK, REBUILD_JOB
from aiserver.ledger.spend.folding import FoldResult, fold_all
from aiserver.ledger.spend.rebuild import rebuild_rollups
from aiserver.taskrunner.health import QUEUE_NAME
from aiserver.taskrunner.jobs import usage_fold_task
from aiserver.taskrunner.worker import worker_options

from ..conftest import Settings, child_env, replace_settings, taskrunner_settings
from ..support.rollups import brute_force, outbox_size, random_events, record, stored_events
from ..support.rollups import stored_rollups as rollups_of
from ..taskrunner.test_worker import run_burst

pytestmark = pytest.mark.slow

ROLLUP_TAGS: Final = ("team", "user")
ADMIN_TOKEN: Final = "rollups-admin-token-0123456789abcdef"


@pytest.fixture
async def ledger(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, int]]:
    """A pool of the test's own (not the services' shared one: the worker and the API open and
    close that), and a project."""
    async with asyncpg.create_pool(settings.core.database_url) as pool:
        project_id = await pool.fetchval(
            "INSERT INTO projects (slug, name, rollup_tags) VALUES ('p', 'P', $1) RETURNING id",
            list(ROLLUP_TAGS),
        )
        yield pool, project_id


async def exact(pool: asyncpg.Pool, project_id: int, rollup_tags: tuple[str, ...]) -> bool:
    expected = brute_force(await stored_events(pool, project_id), rollup_tags)
    return await rollups_of(pool, project_id) == expected and await outbox_size(pool) == 0


async def test_six_folders_and_ingest_at_once_fold_every_event_once_without_a_deadlock(
    settings: Settings, ledger: tuple[asyncpg.Pool, int]
) -> None:
    pool, project_id = ledger
    events = random_events(20, 6_000)
    await record(pool, project_id, events[:4_000])
    ingesting = True

    async def folder() -> FoldResult:
        """Small batches, so that the folders keep meeting on the same rollup rows."""
        conn = await asyncpg.connect(settings.core.database_url)
        total = FoldResult()
        try:
            while True:
                still = ingesting
                done = await fold_all(conn, limit=40)
                total += done
                if not still and done.claimed == 0:
                    return total
        finally:
            await conn.close()

    async def ingest() -> None:
        nonlocal ingesting
        for start in range(4_000, 6_000, 100):
            await record(pool, project_id, events[start : start + 100])
        ingesting = False

    *folders, _ = await asyncio.gather(*(folder() for _ in range(6)), ingest())
    assert sum(f.events for f in folders) == 6_000
    assert sum(f.orphaned for f in folders) == 0
    assert all(f.events > 0 for f in folders)  # they did fold side by side
    assert await exact(pool, project_id, ROLLUP_TAGS)


async def test_rebuilds_amid_folders_and_ingest_give_the_sums_of_the_new_keys(
    settings: Settings, ledger: tuple[asyncpg.Pool, int]
) -> None:
    pool, project_id = ledger
    events = random_events(24, 4_000)
    await record(pool, project_id, events[:2_000])
    async with pool.acquire() as conn:
        await fold_all(conn)
    await pool.execute(
        "UPDATE projects SET rollup_tags = '{feature,env}' WHERE id = $1", project_id
    )
    busy = True

    async def folder() -> None:
        async with pool.acquire() as conn:
            while busy:
                await fold_all(conn, limit=50)

    async def rebuilder() -> None:
        async with pool.acquire() as conn:
            for _ in range(4):
                assert await rebuild_rollups(conn, project_id) is not None
                await asyncio.sleep(0.05)

    async def ingest() -> None:
        for start in range(2_000, 4_000, 100):
            await record(pool, project_id, events[start : start + 100])

    folders = [asyncio.create_task(folder()) for _ in range(4)]
    try:
        await asyncio.gather(rebuilder(), ingest())
    finally:
        busy = False
        await asyncio.gather(*folders)
    async with pool.acquire() as conn:
        await fold_all(conn)
    assert await exact(pool, project_id, ("feature", "env"))


#: A folder that dies holding its transaction: it runs the fold's statement, says what it
#: claimed, and waits (for the SIGKILL) before it would COMMIT.
DOOMED_FOLDER: Final = """
import asyncio, sys
import asyncpg
from aiserver.costs.pricing.usage import CHOICE_FIELDS
from aiserver.ledger.spend.store.rollups import fold_batch

async def main():
    conn = await asyncpg.connect(sys.argv[1], server_settings={"application_name": "doomed"})
    await conn.execute("BEGIN")
    batch = await fold_batch(conn, int(sys.argv[2]), CHOICE_FIELDS)
    print(batch.claimed, batch.folded, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_folder_killed_before_its_commit_changes_nothing_and_the_next_folds_are_exact(
    settings: Settings, ledger: tuple[asyncpg.Pool, int]
) -> None:
    pool, project_id = ledger
    await record(pool, project_id, random_events(21, 3_000))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DOOMED_FOLDER, settings.core.database_url, "1000",
        env=child_env(settings), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.split() == [b"1000", b"1000"]
        # its work is invisible: no rollup, every outbox row still there
        assert await rollups_of(pool, project_id) == {}
        assert await outbox_size(pool) == 3_000
        # a fold now takes the other 2,000 rows; it waits for the rollup rows the doomed
        # folder holds, and goes on once that folder is gone
        async with pool.acquire() as conn:
            meanwhile = asyncio.create_task(fold_all(conn))
            await asyncio.sleep(0.5)
            assert not meanwhile.done()  # held up by the doomed folder's rollup rows
            child.send_signal(signal.SIGKILL)
            assert await child.wait() == -signal.SIGKILL
            assert (await meanwhile).events == 2_000
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    gone = (
        "SELECT count(*) = 0 FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'doomed'"
    )
    while not await pool.fetchval(gone):
        await asyncio.sleep(0.05)
    assert await outbox_size(pool) == 1_000  # what the dead folder had claimed, back
    async with pool.acquire() as conn:
        assert (await fold_all(conn)).events == 1_000
    assert await exact(pool, project_id, ROLLUP_TAGS)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(settings.core.redis_url))
    await pool.flushdb()
    try:
        yield pool
    finally:
        await pool.flushdb()
        await pool.aclose()


def burst_worker(settings: Settings) -> Worker:
    """The task runner's worker in burst mode, the fold cron a plain function under its cron
    name (the test enqueues it; no wall-clock tick fires in the middle of a test)."""
    options: dict[str, Any] = worker_options(taskrunner_settings(settings))
    options["functions"] = [*options["functions"], func(usage_fold_task, name=f"cron:{FOLD_TASK}")]
    options.update({"cron_jobs": [], "burst": True, "poll_delay": 0, "handle_signals": False})
    return Worker(**options)


async def test_the_task_runner_folds_on_its_cron_and_rebuilds_after_a_change_through_the_api(
    settings: Settings, ledger: tuple[asyncpg.Pool, int], redis: ArqRedis
) -> None:
    pool, project_id = ledger
    await record(pool, project_id, random_events(22, 800))
    await redis.enqueue_job(f"cron:{FOLD_TASK}", _queue_name=QUEUE_NAME)
    worker = await run_burst(burst_worker(settings))
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert await exact(pool, project_id, ROLLUP_TAGS)

    await record(pool, project_id, random_events(23, 200, prefix="later"))
    api_settings = replace_settings(settings, api_admin_tokens=(ADMIN_TOKEN,))
    async with AsyncTestClient(app=create_app(api_settings)) as client:
        response = await client.patch(
            "/v1/projects/p",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={"rollup_tags": ["feature"]},
        )
    assert response.status_code == 200, response.text
    queued = [job.function for job in await redis.queued_jobs(queue_name=QUEUE_NAME)]
    assert queued == [REBUILD_JOB]
    await redis.enqueue_job(f"cron:{FOLD_TASK}", _queue_name=QUEUE_NAME)
    worker = await run_burst(burst_worker(settings))  # the rebuild and a fold, side by side
    assert (worker.jobs_complete, worker.jobs_failed) == (2, 0)
    async with pool.acquire() as conn:
        await fold_all(conn)  # what the fold left to the rebuild, if they met
    assert await exact(pool, project_id, ("feature",))
    results = {r.function: r.result for r in await redis.all_job_results()}
    assert results[REBUILD_JOB]["outcome"] == "rebuilt"
    assert results[REBUILD_JOB]["rollup_tags"] == ["feature"]
