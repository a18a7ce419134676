"""The arq worker against real Redis and PostgreSQL, in burst mode."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix
from arq.worker import Worker, func

from aiserver.core_db.database import require_pool
from aiserver.costs.refresh import snapshot_bytes
from aiserver.documents import service as document_service
from aiserver.documents.jobs import PROCESS_JOB, process_job_id
from aiserver.documents.service import JOB_BOUNDS, JOB_MAX_TRIES, VISIBLE_WITHIN_S
from aiserver.ledger import projects
from aiserver.ledger.access import Access
from aiserver.ledger.usage.partitions import AHEAD, month_of, next_month, partition_name
from aiserver.taskrunner.cli import check
from aiserver.taskrunner.health import QUEUE_NAME, health_check_key
from aiserver.taskrunner.jobs import JOB_ENDED_UNSETTLED, cost_data_update_task
from aiserver.taskrunner.worker import (
    IDLE_IN_TRANSACTION_S,
    documents_sweep_cron,
    lost_connection,
    partitions_cron,
    refresh_cron,
    startup,
    worker_options,
)

from ..conftest import Settings, make_settings, replace_settings, taskrunner_settings
from ..support.catalog import fetch_one
from ..support.documents import note
from ..support.upstream import Upstream


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(settings.core.redis_url))
    await pool.flushdb()
    try:
        yield pool
    finally:
        await pool.flushdb()
        await pool.aclose()


def changed_snapshot(price: float = 9.99e-06) -> bytes:
    """The bundled snapshot (what start-up seeds) with one price changed."""
    body = json.loads(snapshot_bytes())
    body["gpt-4o"]["input_cost_per_token"] = price
    return json.dumps(body).encode()


@pytest.fixture
def cfg(settings: Settings, upstream: Upstream) -> Settings:
    upstream.serve(changed_snapshot())
    return replace_settings(
        settings,
        model_cost_source_url=upstream.url,
        model_cost_fetch_retries=0,
        model_cost_fetch_timeout_seconds=2.0,
    )


def make_worker(settings: Settings, **overrides: Any) -> Worker:
    options = worker_options(taskrunner_settings(settings))
    # The cron job as a plain function under its cron name: a test enqueues it when it wants
    # it, and no wall-clock schedule fires in the middle of a test.
    options["functions"] = [
        *options["functions"],
        func(cost_data_update_task, name="cron:cost_data_update_task"),
    ]
    options["cron_jobs"] = []
    options.update({"burst": True, "poll_delay": 0, "handle_signals": False, **overrides})
    return Worker(**options)


async def run_burst(worker: Worker) -> Worker:
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


async def results(redis: ArqRedis) -> list[dict[str, Any]]:
    found = await redis.all_job_results()
    return [r.result for r in sorted(found, key=lambda r: r.start_time)]


async def _runs(url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT trigger, outcome FROM ai_cost_refresh_runs ORDER BY id")
    finally:
        await conn.close()
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_startup_on_an_empty_database_migrates_and_seeds(
    empty_database_url: str, redis: ArqRedis
) -> None:
    settings = make_settings(empty_database_url)
    await run_burst(make_worker(settings))
    assert await _runs(empty_database_url) == [("seed", "seeded")]
    count = await fetch_one(
        empty_database_url, "SELECT count(*) FROM ai_model_costs WHERE valid_to IS NULL"
    )
    assert count[0] > 4000


async def test_the_jobs_pool_ends_a_transaction_left_waiting_and_bounds_no_statement(
    cfg: Settings, redis: ArqRedis
) -> None:
    """A connection of the task runner gone silent mid-transaction held a fold's or reprice's
    locks until TCP gave up (a chaos review): PostgreSQL, waiting for the next statement, never
    hears. The jobs' pool has PostgreSQL end such a transaction after IDLE_IN_TRANSACTION_S;
    no statement is bounded (a rebuild's may run long)."""
    seen: dict[str, str] = {}

    async def look(ctx: dict[str, Any]) -> None:
        await startup(ctx)
        async with require_pool().acquire() as conn:
            for name in ("idle_in_transaction_session_timeout", "statement_timeout"):
                seen[name] = await conn.fetchval(f"SHOW {name}")

    await run_burst(make_worker(cfg, on_startup=look))
    waits = f"{IDLE_IN_TRANSACTION_S // 60}min"  # as PostgreSQL writes 600 s
    assert seen == {"idle_in_transaction_session_timeout": waits, "statement_timeout": "0"}


async def test_cron_refreshes_when_stale_and_skips_when_fresh(
    cfg: Settings, redis: ArqRedis, upstream: Upstream
) -> None:
    await redis.enqueue_job("cron:cost_data_update_task", _queue_name=QUEUE_NAME)
    worker = await run_burst(make_worker(cfg))
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    await redis.enqueue_job("cron:cost_data_update_task", _queue_name=QUEUE_NAME)
    await run_burst(make_worker(cfg))
    outcomes = [r["outcome"] for r in await results(redis)]
    assert outcomes == ["applied", "fresh"]
    assert len(upstream.requests) == 1
    assert await _runs(cfg.core.database_url) == [("seed", "seeded"), ("cron", "applied")]


async def test_forced_refresh_goes_to_the_upstream_even_when_fresh(
    cfg: Settings, redis: ArqRedis, upstream: Upstream
) -> None:
    await redis.enqueue_job("refresh_costs", _queue_name=QUEUE_NAME)
    await run_burst(make_worker(cfg))
    await redis.enqueue_job("refresh_costs", force=True, _queue_name=QUEUE_NAME)
    await run_burst(make_worker(cfg))
    outcomes = [r["outcome"] for r in await results(redis)]
    assert outcomes == ["applied", "not_modified"]
    assert len(upstream.requests) == 2


async def test_a_transient_upstream_failure_is_retried_within_the_job_then_recovers(
    cfg: Settings, redis: ArqRedis, upstream: Upstream
) -> None:
    upstream.serve(changed_snapshot(), mode="status")
    upstream.status = 502
    upstream.failures_before_ok = 1
    await redis.enqueue_job("refresh_costs", _queue_name=QUEUE_NAME)
    retrying = replace_settings(cfg, model_cost_fetch_retries=1)
    worker = await run_burst(make_worker(retrying))
    # one retry policy: the fetch's (MODEL_COST_FETCH_RETRIES); arq does not run it again
    assert (worker.jobs_retried, worker.jobs_complete, worker.jobs_failed) == (0, 1, 0)
    (result,) = await results(redis)
    assert result["outcome"] == "applied"
    assert len(upstream.requests) == 2
    assert [run[1] for run in await _runs(cfg.core.database_url)] == ["seeded", "applied"]


async def test_a_refresh_that_still_fails_is_recorded_once_and_not_run_again(
    cfg: Settings, redis: ArqRedis, upstream: Upstream
) -> None:
    upstream.serve(changed_snapshot(), mode="status")
    upstream.status = 502
    upstream.failures_before_ok = 10
    await redis.enqueue_job("refresh_costs", _queue_name=QUEUE_NAME)
    worker = await run_burst(make_worker(replace_settings(cfg, model_cost_fetch_retries=2)))
    assert (worker.jobs_retried, worker.jobs_complete, worker.jobs_failed) == (0, 1, 0)
    (result,) = await results(redis)
    assert result["outcome"] == "failed"
    assert len(upstream.requests) == 3  # the first try and MODEL_COST_FETCH_RETRIES=2, no more
    assert [run[1] for run in await _runs(cfg.core.database_url)] == ["seeded", "failed"]


#: How far from the refresh schedule's next tick the start-up test begins (it takes seconds).
TICK_MARGIN_S = 30.0


async def test_a_stale_catalog_is_refreshed_when_the_worker_starts(
    cfg: Settings, redis: ArqRedis, upstream: Upstream
) -> None:
    """The cron's schedule is every ten minutes; a fresh deployment (or a restart after a day
    offline) must not serve stale prices until the first tick."""
    runner = taskrunner_settings(cfg)
    assert refresh_cron(runner).run_at_startup
    # the schedule's own tick (every ten minutes, on the clock) would run it a second time
    interval = runner.costs.model_cost_refresh_interval_seconds
    to_tick = interval - time.time() % interval
    if to_tick < TICK_MARGIN_S:
        await asyncio.sleep(to_tick + 1)
    worker = await run_burst(make_worker(cfg, cron_jobs=[refresh_cron(runner)]))
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert await _runs(cfg.core.database_url) == [("seed", "seeded"), ("cron", "applied")]
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(("conversion_s", "concurrent"), [(120.0, 2), (600.0, 1), (30.0, 32)])
def test_a_document_job_outlasts_every_wait_its_settings_allow(
    settings: Settings, conversion_s: float, concurrent: int
) -> None:
    """arq never runs a job again after its own timeout, so a conversion job cut by it left its
    document `processing` for good (at 600 s a conversion, a fixed 900 s job timeout). The job's
    limit must outlast the worst wait: behind the task runner's other jobs for a slot, each
    holding it for its conversion and its bounded database steps, then its own, and the wait
    for its row. Its tries are its own: arq's last one is the one that fails a document."""
    cfg = replace_settings(
        settings,
        document_conversion_timeout_seconds=conversion_s,
        document_max_concurrent=concurrent,
    )
    options = worker_options(taskrunner_settings(cfg))
    (job,) = [f for f in options["functions"] if f.name == "process_document"]
    ahead = options["max_jobs"] - 1  # the other jobs this task runner may be running
    rounds = ahead // concurrent + 1
    step = JOB_BOUNDS.step_s + JOB_BOUNDS.lock_wait_s  # a database step, its clean-up included
    save = JOB_BOUNDS.save_s + JOB_BOUNDS.lock_wait_s
    held = step + conversion_s + step  # marked processing, converted, failed
    own = VISIBLE_WITHIN_S + 1 + 2 * step + save + step  # its row, its try; its outputs
    assert job.timeout_s is not None
    assert job.timeout_s > rounds * held + own
    assert job.max_tries == JOB_MAX_TRIES > options["max_tries"]


def test_arq_s_own_command_gets_the_same_worker_settings(settings: Settings) -> None:
    """`arq aiserver.taskrunner.worker.WorkerSettings` reads the one source of the options:
    the cron, the Redis of REDIS_URL and the jobs, as `aiserver-taskrunner` does."""
    code = (
        "import json\n"
        "from arq.worker import get_kwargs\n"
        "from aiserver.taskrunner.worker import WorkerSettings\n"
        "options = get_kwargs(WorkerSettings)\n"
        "print(json.dumps({\n"
        "    'cron': [(c.name, c.run_at_startup, sorted(c.minute or c.second))\n"
        "             for c in options['cron_jobs']],\n"
        "    'functions': sorted(f.name for f in options['functions']),\n"
        "    'redis': [options['redis_pool'].connection_pool.connection_kwargs[k]\n"
        "              for k in ('host', 'db')],\n"
        "    'startup': options['on_startup'].__name__,\n"
        "}))\n"
    )
    env = {
        **os.environ,
        "REDIS_URL": "redis://cache.example:6379/5",
        "MODEL_COST_REFRESH_INTERVAL_SECONDS": "900",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == {
        "cron": [
            ["cron:cost_data_update_task", True, [0, 15, 30, 45]],
            ["cron:usage_partitions_task", True, [17]],
            ["cron:usage_fold_task", True, [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55]],
            ["cron:usage_reprice_task", True, list(range(60))],
            ["cron:budget_reservations_sweep_task", False, list(range(60))],
            ["cron:budget_alerts_task", True, [0, 10, 20, 30, 40, 50]],
            ["cron:documents_sweep_task", True, [41]],
        ],
        "functions": [
            "process_document",
            "rebuild_rollups",
            "refresh_costs",
            "reprice_usage",
            "usage_reprice_task",
        ],
        "redis": ["cache.example", 5],
        "startup": "startup",
    }


async def test_a_guardrail_rejection_is_not_retried_and_is_recorded(
    cfg: Settings, redis: ArqRedis, upstream: Upstream
) -> None:
    upstream.serve(b"<html>maintenance</html>")
    await redis.enqueue_job("refresh_costs", _queue_name=QUEUE_NAME)
    worker = await run_burst(make_worker(cfg))
    assert (worker.jobs_retried, worker.jobs_complete) == (0, 1)
    (result,) = await results(redis)
    assert result["outcome"] == "rejected"
    assert result["error"].startswith("not JSON")
    meta = await fetch_one(cfg.core.database_url, "SELECT last_error FROM ai_cost_metadata")
    assert meta["last_error"].startswith("rejected: not JSON")


async def test_two_workers_at_once_refresh_once(
    cfg: Settings, redis: ArqRedis, upstream: Upstream
) -> None:
    upstream.delay = 0.5
    for _ in range(2):
        await redis.enqueue_job("refresh_costs", force=True, _queue_name=QUEUE_NAME)
    await asyncio.gather(run_burst(make_worker(cfg)), run_burst(make_worker(cfg)))
    outcomes = sorted(r["outcome"] for r in await results(redis))
    assert outcomes.count("applied") == 1
    assert outcomes == sorted(["applied", outcomes[1 - outcomes.index("applied")]])
    assert set(outcomes) - {"applied"} <= {"already_running", "not_modified"}
    versions = await fetch_one(
        cfg.core.database_url, "SELECT count(*) FROM ai_model_costs WHERE model = 'gpt-4o'"
    )
    assert versions[0] == 2  # the seeded one, closed, and the refreshed one


async def test_check_is_0_with_a_live_worker_and_1_without(cfg: Settings, redis: ArqRedis) -> None:
    assert await check(cfg) == 1
    worker = make_worker(cfg, burst=False)
    task = asyncio.create_task(worker.main())
    try:
        for _ in range(100):
            if await redis.exists(health_check_key()):
                break
            await asyncio.sleep(0.1)
        assert await check(cfg) == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await worker.close()
    assert await check(cfg) == 1


async def test_check_fails_cleanly_when_redis_is_unreachable(cfg: Settings) -> None:
    unreachable = replace_settings(cfg, redis_url="redis://127.0.0.1:1/0")
    assert await check(unreachable) == 1


def coming_months() -> list[str]:
    """The partitions the maintenance keeps ahead now: this month and the next AHEAD."""
    month, names = month_of(datetime.now(UTC)), []
    for _ in range(AHEAD + 1):
        names.append(partition_name(month))
        month = next_month(month)
    return names


async def _partitions(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1"
        )
    finally:
        await conn.close()
    return [r["relname"] for r in rows]


async def test_the_worker_makes_the_coming_months_partitions_when_it_starts(
    cfg: Settings, redis: ArqRedis
) -> None:
    """The cron runs hourly and at start; the job calls the ledger and answers what it did."""
    assert partitions_cron().run_at_startup
    expected = coming_months()
    worker = await run_burst(make_worker(cfg, cron_jobs=[partitions_cron()]))
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert await results(redis) == [
        {
            "outcome": "done", "created": expected, "dropped": [], "postponed": [],
            "unfolded": [], "keys_forgotten": 0, "rebuilds_enqueued": [],
        }
    ]  # fmt: skip
    assert await _partitions(cfg.core.database_url) == expected


async def test_a_project_whose_rollup_rebuild_was_lost_is_rebuilt_by_the_hourly_upkeep(
    cfg: Settings, redis: ArqRedis
) -> None:
    """A change of a project's rolled-up keys enqueues its rebuild; one lost on the way (its try
    failed while PostgreSQL was away, Redis restarted empty) left the project waiting for good.
    The hourly upkeep enqueues it again, and the rebuild clears the wait."""
    pool = await asyncpg.create_pool(cfg.core.database_url, min_size=1, max_size=2)
    try:
        project = await projects.create_project(
            pool, Access.operator(), slug="waits", name="Waits", rollup_tags=["team"]
        )
        await pool.execute(  # as a key change leaves it, its job lost
            "UPDATE projects SET rolled_up_tags = '{}', rollup_rebuild_pending = true"
            " WHERE id = $1",
            project.id,
        )
        worker = await run_burst(make_worker(cfg, cron_jobs=[partitions_cron()]))
        assert (worker.jobs_complete, worker.jobs_failed) == (2, 0)  # the upkeep, the rebuild
        (upkeep,) = [r for r in await results(redis) if "rebuilds_enqueued" in r]
        assert upkeep["rebuilds_enqueued"] == [project.id]
        row = await pool.fetchrow(
            "SELECT rolled_up_tags, rollup_rebuild_pending FROM projects WHERE id = $1",
            project.id,
        )
        assert (row["rolled_up_tags"], row["rollup_rebuild_pending"]) == (["team"], False)
    finally:
        await pool.close()


async def test_two_workers_starting_together_make_each_partition_once(
    cfg: Settings, redis: ArqRedis
) -> None:
    expected = coming_months()
    workers = await asyncio.gather(
        run_burst(make_worker(cfg, cron_jobs=[partitions_cron()])),
        run_burst(make_worker(cfg, cron_jobs=[partitions_cron()])),
    )
    # each worker enqueues its start-up run; either may take both from the shared queue
    assert sum(w.jobs_complete for w in workers) == 2
    assert [w.jobs_failed for w in workers] == [0, 0]
    done = await results(redis)
    # one made them all; the other found the lock taken, or ran after and found nothing to do
    assert sorted(r["outcome"] for r in done) in (["already_running", "done"], ["done", "done"])
    assert sorted(name for r in done for name in r["created"]) == expected
    assert await _partitions(cfg.core.database_url) == expected


async def test_a_document_whose_job_was_lost_is_enqueued_again_and_one_left_unsettled_fails(
    cfg: Settings, redis: ArqRedis
) -> None:
    """A document stays queued or processing until its job settles it: a job lost on the way
    (Redis restarted empty) or one that ended without settling it (arq cut its last try) left
    it so for good. The documents' sweep enqueues the lost one again and fails the other; it
    leaves alone a document of a few minutes ago and one whose job is running."""
    converted: list[str] = []

    async def conversion(ctx: dict[str, Any], document_id: str) -> None:  # records, converts not
        converted.append(document_id)

    pool = await asyncpg.create_pool(cfg.core.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            lost, ended, recent, running = [await note(conn) for _ in range(4)]
            await conn.execute(
                "UPDATE documents SET created_at = now() - interval '1 hour',"
                " status = CASE WHEN id = $2 THEN 'processing' ELSE status END"
                " WHERE id = ANY($1::uuid[])",
                [lost, ended, running],
                ended,
            )
        # `ended`'s job ran and ended (a result is kept) without settling the document
        await redis.enqueue_job(PROCESS_JOB, str(ended), _job_id=process_job_id(str(ended)))
        await run_burst(make_worker(cfg, functions=[func(conversion, name=PROCESS_JOB)]))
        assert converted == [str(ended)]
        # `running`'s job is being run by another worker
        await redis.set(in_progress_key_prefix + process_job_id(str(running)), b"1", px=60_000)

        await run_burst(
            make_worker(
                cfg,
                functions=[func(conversion, name=PROCESS_JOB)],
                cron_jobs=[documents_sweep_cron()],
            )
        )
        (sweep,) = [r for r in await results(redis) if isinstance(r, dict) and "requeued" in r]
        assert sweep == {
            "looked_at": 3, "requeued": [str(lost)], "failed": [str(ended)], "deleted": 0
        }  # fmt: skip
        assert converted == [str(ended), str(lost)]  # the lost one's job ran again
        rows = await pool.fetch(
            "SELECT id, status, error FROM documents WHERE id = ANY($1::uuid[])",
            [lost, ended, recent, running],
        )
        states = {row["id"]: (row["status"], row["error"]) for row in rows}
        assert states == {
            lost: ("queued", None),  # the recorder converts nothing
            ended: ("failed", JOB_ENDED_UNSETTLED),
            recent: ("queued", None),
            running: ("queued", None),
        }
    finally:
        await pool.close()


async def _finished(conn: Any, status: str, days_ago: float) -> uuid.UUID:
    """A document done (with a PDF and a page) or failed `days_ago` days ago."""
    document_id = await note(conn)
    await conn.execute(
        "UPDATE documents SET status = $2, finished_at = now() - make_interval(secs => $3),"
        " pdf = CASE WHEN $2 = 'done' THEN '%PDF-'::bytea END,"
        " page_count = CASE WHEN $2 = 'done' THEN 1 END,"
        " error = CASE WHEN $2 = 'failed' THEN 'no' END WHERE id = $1",
        document_id, status, days_ago * 86_400,
    )  # fmt: skip
    if status == "done":
        await conn.execute(
            "INSERT INTO document_pages (document_id, page, png) VALUES ($1, 1, 'png')",
            document_id,
        )
    return document_id


@pytest.mark.parametrize("retention_days", [0, 30])
async def test_the_sweep_deletes_the_documents_finished_before_their_retention(
    cfg: Settings, redis: ArqRedis, retention_days: int
) -> None:
    """DOCUMENT_RETENTION_DAYS: a document done or failed longer ago is deleted with its PDF and
    pages by the hourly sweep; a later one, or one not finished, stays; 0 keeps them all."""
    pool = await asyncpg.create_pool(cfg.core.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            old_done = await _finished(conn, "done", 31)
            old_failed = await _finished(conn, "failed", 30.01)
            recent = await _finished(conn, "done", 29.99)
            # queued for long: the sweep enqueues its job again (it is converted), never deletes it
            waiting = await note(conn)
            await conn.execute(
                "UPDATE documents SET created_at = now() - interval '40 days' WHERE id = $1",
                waiting,
            )
        kept = replace_settings(cfg, document_retention_days=retention_days)
        await run_burst(make_worker(kept, cron_jobs=[documents_sweep_cron()]))
        (sweep,) = [r for r in await results(redis) if isinstance(r, dict) and "deleted" in r]
        left = {row["id"] for row in await pool.fetch("SELECT id FROM documents")}
        paged = {
            r["document_id"] for r in await pool.fetch("SELECT document_id FROM document_pages")
        }
    finally:
        await pool.close()
    everything = {old_done, old_failed, recent, waiting}
    if retention_days == 0:
        assert (sweep["deleted"], left) == (0, everything)
        assert paged - {waiting} == {old_done, recent}
    else:
        assert (sweep["deleted"], left) == (2, {recent, waiting})
        assert paged - {waiting} == {recent}  # the deleted one's pages went with it


async def test_the_retention_deletes_in_batches_up_to_its_limit_per_sweep(
    cfg: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch is a transaction of its own (a document may hold hundreds of MB of pages),
    and one sweep deletes at most RETENTION_LIMIT, for RETENTION_BUDGET_S at most: the next
    takes the rest."""
    monkeypatch.setattr(document_service, "RETENTION_BATCH", 2)
    monkeypatch.setattr(document_service, "RETENTION_LIMIT", 3)
    pool = await asyncpg.create_pool(cfg.core.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            for days in range(31, 36):
                await _finished(conn, "failed", days)
        assert await document_service.delete_expired(pool, 30) == 3  # batches of 2, then 1
        monkeypatch.setattr(document_service, "RETENTION_BUDGET_S", 0.0)
        assert await document_service.delete_expired(pool, 30) == 0  # no time left: none
        monkeypatch.setattr(document_service, "RETENTION_BUDGET_S", 60.0)
        assert await document_service.delete_expired(pool, 30) == 2  # the rest, next time
        assert await document_service.delete_expired(pool, 30) == 0
        assert await pool.fetchval("SELECT count(*) FROM documents") == 0
    finally:
        await pool.close()


async def _until_it_fails(conn: asyncpg.Connection) -> None:
    """Statements on `conn` until one fails: this side reads the end of a terminated
    connection a moment after PostgreSQL ended it."""
    async with asyncio.timeout(20):
        while True:
            await conn.fetchval("SELECT 1")
            await asyncio.sleep(0.02)


async def test_a_start_counts_a_lost_connection_as_the_database_gone_and_a_misuse_as_a_bug(
    migrated_database_url: str,
) -> None:
    """What `startup` turns into DatabaseUnavailable (tried again by `cli.run`) and what it lets
    through (the runner ends with the traceback): real errors of real connections. A misuse of
    an open connection is a bug, and a start that retried it would be retried for ever."""
    errors: dict[str, BaseException] = {}
    conn = await asyncpg.connect(migrated_database_url)
    try:
        await conn.execute("BEGIN")
        with pytest.raises(asyncpg.InterfaceError) as misuse:
            async with conn.transaction():
                pass
        errors["misuse"] = misuse.value
        await conn.execute("ROLLBACK")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        killer = await asyncpg.connect(migrated_database_url)
        try:
            await killer.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await killer.close()
        # (InternalClientError when the statement went out just before asyncpg read the close)
        ended = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
        with pytest.raises(ended) as terminated:
            await _until_it_fails(conn)
        errors["terminated"] = terminated.value
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InterfaceError) as closed:
        await conn.fetchval("SELECT 1")
    errors["closed"] = closed.value
    try:
        raise RuntimeError("a step of the start failed") from errors["closed"]
    except RuntimeError as exc:
        errors["raised from closed"] = exc
    lost = {name: lost_connection(exc) for name, exc in errors.items()}
    assert lost == {"misuse": False, "terminated": True, "closed": True, "raised from closed": True}
