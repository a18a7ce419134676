"""The arq worker against real Redis and PostgreSQL, in burst mode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, func

from aiserver.core_db.settings import Settings
from aiserver.costs.refresh import snapshot_bytes
from aiserver.taskrunner.cli import check
from aiserver.taskrunner.health import QUEUE_NAME, health_check_key
from aiserver.taskrunner.jobs import cost_data_update_task
from aiserver.taskrunner.worker import worker_options

from ..conftest import make_settings
from ..support.catalog import fetch_one
from ..support.upstream import Upstream


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(settings.redis_url))
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
    return msgspec.structs.replace(
        settings,
        model_cost_source_url=upstream.url,
        model_cost_fetch_retries=0,
        model_cost_fetch_timeout_seconds=2.0,
    )


def make_worker(settings: Settings, **overrides: Any) -> Worker:
    options = worker_options(settings)
    options["ctx"] = {"settings": settings, "retry_base_delay_s": 0.05}
    # The cron job as a plain function under its cron name: a test enqueues it when it wants
    # it, and no wall-clock schedule fires in the middle of a test.
    options["functions"] = [
        *options["functions"],
        func(cost_data_update_task, name="cron:cost_data_update_task", max_tries=4),
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
    assert await _runs(cfg.database_url) == [("seed", "seeded"), ("cron", "applied")]


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


async def test_a_transient_upstream_failure_is_retried_then_recovers(
    cfg: Settings, redis: ArqRedis, upstream: Upstream
) -> None:
    upstream.serve(changed_snapshot(), mode="status")
    upstream.status = 502
    upstream.failures_before_ok = 1
    await redis.enqueue_job("refresh_costs", _queue_name=QUEUE_NAME)
    worker = await run_burst(make_worker(cfg))
    assert (worker.jobs_retried, worker.jobs_complete, worker.jobs_failed) == (1, 1, 0)
    (result,) = await results(redis)
    assert result["outcome"] == "applied"
    assert [run[1] for run in await _runs(cfg.database_url)] == ["seeded", "failed", "applied"]


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
    meta = await fetch_one(cfg.database_url, "SELECT last_error FROM ai_cost_metadata")
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
        cfg.database_url, "SELECT count(*) FROM ai_model_costs WHERE model = 'gpt-4o'"
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
    unreachable = msgspec.structs.replace(cfg, redis_url="redis://127.0.0.1:1/0")
    assert await check(unreachable) == 1
