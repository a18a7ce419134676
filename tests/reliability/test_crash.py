"""Scenario 2: a task runner killed (SIGKILL) in the middle of the refresh's write.

tests/costs/test_refresh_crash.py kills an `aiserver-costs refresh` process at that moment; this
kills a real `aiserver-taskrunner` whose cron job is refreshing, as a container runtime would.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import asyncpg
import pytest

from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings, replace_settings
from ..support.catalog import catalog_rows, document, models
from ..support.processes import taskrunners
from ..support.upstream import Upstream
from .harness import advisory_locks, eventually, taskrunner_env

pytestmark = pytest.mark.slow

#: The refresh's transaction has rewritten the price rows and waits for the aliases table.
WRITING = """
SELECT count(*) FROM pg_stat_activity AS a
JOIN pg_locks AS l ON l.pid = a.pid
JOIN pg_class AS c ON c.oid = l.relation
WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'
  AND a.query LIKE '%ai_model_aliases%'
  AND c.relname = 'ai_model_costs' AND l.mode = 'RowExclusiveLock' AND l.granted
"""


async def test_sigkill_of_a_task_runner_mid_write_keeps_the_previous_catalog_and_frees_the_lock(
    settings: Settings, upstream: Upstream, tmp_path: Path
) -> None:
    cfg = replace_settings(settings, model_cost_source_url=upstream.url)
    upstream.serve(document(models(20)))
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    before = await catalog_rows(cfg.core.database_url)
    changed = models(25)
    for name in list(changed)[:10]:
        changed[name]["input_cost_per_token"] = "7.5e-06"
    upstream.serve(document(changed))

    # With a 1 s maximum age and a cron tick every second, the runner refreshes right after its
    # start; the lock held here stops that refresh after it has written the price rows.
    env = taskrunner_env(
        cfg.core.database_url,
        upstream_url=upstream.url,
        MODEL_COST_MAX_AGE_SECONDS="1",
        MODEL_COST_REFRESH_INTERVAL_SECONDS="1",
    )
    blocker = await asyncpg.connect(cfg.core.database_url)
    observer = await asyncpg.connect(cfg.core.database_url)
    try:
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute("LOCK TABLE ai_model_aliases IN ACCESS EXCLUSIVE MODE")
        async with taskrunners(1, env, tmp_path) as (runner,):
            await runner.wait_for("task runner ready")
            await eventually(lambda: observer.fetchval(WRITING), timeout=60)
            os.kill(runner.proc.pid, signal.SIGKILL)
            assert await asyncio.wait_for(runner.proc.wait(), 10) == -signal.SIGKILL
        await hold.rollback()
        # PostgreSQL ends the orphaned backend once it notices the closed socket
        await eventually(lambda: _no_locks(cfg.core.database_url), timeout=30)
    finally:
        await observer.close()
        await blocker.close()

    assert await catalog_rows(cfg.core.database_url) == before  # the previous catalog, whole
    report = await refresh_catalog(
        cfg.core, cfg.costs, force=True, trigger="test"
    )  # and the lock is free
    assert (report.outcome, report.added, report.changed) == (Outcome.APPLIED, 5, 10)


async def _no_locks(url: str) -> bool:
    return await advisory_locks(url) == 0
