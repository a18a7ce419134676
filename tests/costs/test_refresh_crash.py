"""A refresh killed with SIGKILL in the middle of its write leaves the previous catalog whole."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncpg

from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings, replace_settings
from ..support.catalog import catalog_rows, document, models
from ..support.processes import kill
from ..support.upstream import Upstream


async def _wait_for(conn: asyncpg.Connection, query: str, *, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await conn.fetchval(query):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for: {query}"
        await asyncio.sleep(0.05)


async def test_sigkill_during_the_write_keeps_the_previous_catalog_and_frees_the_lock(
    settings: Settings, upstream: Upstream
) -> None:
    cfg = replace_settings(settings, model_cost_source_url=upstream.url)
    upstream.serve(document(models(20)))
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    before = await catalog_rows(cfg.core.database_url)

    changed = models(25)
    for name in list(changed)[:10]:
        changed[name]["input_cost_per_token"] = "7.5e-06"
    upstream.serve(document(changed))

    blocker = await asyncpg.connect(cfg.core.database_url)
    child = None
    try:
        # Hold a lock the refresh needs after it has already rewritten the price rows in its
        # transaction (it reads the aliases last), so the kill lands mid-write.
        blocker_tx = blocker.transaction()
        await blocker_tx.start()
        await blocker.execute("LOCK TABLE ai_model_aliases IN ACCESS EXCLUSIVE MODE")
        env = dict(
            os.environ,
            DATABASE_URL=cfg.core.database_url,
            MODEL_COST_SOURCE_URL=upstream.url,
            LOG_FORMAT="json",
        )
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aiserver.costs.cli", "refresh", "--force", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        observer = await asyncpg.connect(cfg.core.database_url)
        try:
            await _wait_for(
                observer,
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%ai_model_aliases%'",
            )
            # By now the refresh's open transaction has closed and opened versions: its backend
            # holds the row-exclusive lock that UPDATE and INSERT take on ai_model_costs.
            writing = await observer.fetchval(
                """
                SELECT count(*) FROM pg_locks AS l
                JOIN pg_class AS c ON c.oid = l.relation
                JOIN pg_stat_activity AS a ON a.pid = l.pid
                WHERE c.relname = 'ai_model_costs' AND l.mode = 'RowExclusiveLock'
                  AND a.wait_event_type = 'Lock'
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                """
            )
            assert writing == 1
            os.kill(child.pid, signal.SIGKILL)
            await child.wait()
            await blocker_tx.rollback()
            # PostgreSQL ends the orphaned backend once it notices the closed socket.
            await _wait_for(
                observer,
                "SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
        finally:
            await observer.close()
    finally:
        if child is not None:
            await kill(child)
        await blocker.close()

    assert child.returncode == -signal.SIGKILL
    assert await catalog_rows(cfg.core.database_url) == before
    # and the next refresh applies the new document in full
    report = await refresh_catalog(cfg.core, cfg.costs, force=True, trigger="test")
    assert (report.outcome, report.added, report.changed) == (Outcome.APPLIED, 5, 10)
