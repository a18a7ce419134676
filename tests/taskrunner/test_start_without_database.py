"""`aiserver-taskrunner` started while PostgreSQL does not answer: a real process, real Redis.

It waits for the database as it waits for Redis (a new worker every REDIS_RETRY_S), and its log
names the database, not Redis: an operator reading it looks at the right service.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from aiserver.core_db.locks import advisory_lock_key
from aiserver.core_db.migrations import MIGRATION_LOCK
from aiserver.costs.refresh import snapshot_bytes

from ..support.processes import taskrunners
from ..support.upstream import Upstream
from .test_processes import process_env

pytestmark = pytest.mark.slow

WAITING = "database not ready at start: the worker starts again in a moment"
FAILED = "the worker failed: it starts again in a moment"


async def test_a_start_without_postgresql_waits_for_it_and_says_so(
    redis: Redis, upstream: Upstream, tmp_path: Path
) -> None:
    env = process_env("postgresql://postgres@127.0.0.1:1/aiserver_nowhere", upstream)
    async with taskrunners(1, env, tmp_path) as (runner,):
        await runner.wait_for(WAITING)
        assert await runner.terminate() == 0
    events = runner.events()
    waits = [e for e in events if e.get("event") == WAITING]
    assert waits
    assert waits[0]["error"].startswith("DatabaseUnavailable: cannot connect to PostgreSQL at ")
    names = [e.get("event") for e in events]
    # Redis answered all along, and a runner that never got ready never "stopped"
    assert not any("redis unreachable" in str(name) for name in names)
    assert "task runner ready" not in names
    assert "task runner stopped" not in names


async def test_a_connection_cut_while_waiting_for_the_migrations_lock_is_waited_out(
    migrated_database_url: str, redis: Redis, upstream: Upstream, tmp_path: Path
) -> None:
    """PostgreSQL restarting while the runner waits for another runner's migrations (or while
    it migrates) ends its connection: the start fails as one without PostgreSQL does, and the
    runner starts again, rather than ending with a traceback."""
    upstream.serve(snapshot_bytes())
    env = process_env(migrated_database_url, upstream)
    holder = await asyncpg.connect(migrated_database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", advisory_lock_key(MIGRATION_LOCK))
        async with taskrunners(1, env, tmp_path) as (runner,):
            await runner.wait_for("waiting for advisory lock")
            await holder.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await holder.execute("SELECT pg_advisory_unlock_all()")
            await runner.wait_for("task runner ready")
            assert await runner.terminate() == 0
    finally:
        await holder.close()
    waits = [e for e in runner.events() if e.get("event") == WAITING]
    assert waits, runner.log.read_text()


async def test_a_connection_cut_after_the_migrations_is_waited_out_too(
    migrated_database_url: str, redis: Redis, upstream: Upstream, tmp_path: Path
) -> None:
    """The start goes on after the migrations (the pool, the budget webhook secrets' check):
    a connection PostgreSQL ends there is a start without the database as well, tried again,
    not a traceback that ends the runner. Held by a lock on `budgets`, the runner's step for the
    webhook secrets (without WEBHOOK_SECRET_KEYS) has its backend terminated."""
    upstream.serve(snapshot_bytes())
    env = process_env(migrated_database_url, upstream)
    env.pop("WEBHOOK_SECRET_KEYS", None)
    holder = await asyncpg.connect(migrated_database_url)
    # pg_stat_activity is read outside the holder's transaction, which would see one snapshot
    watcher = await asyncpg.connect(migrated_database_url)
    try:
        locking = holder.transaction()
        await locking.start()
        await holder.execute("LOCK TABLE budgets IN ACCESS EXCLUSIVE MODE")
        async with taskrunners(1, env, tmp_path) as (runner,):
            async with asyncio.timeout(60):  # its step after the migrations waits
                while not (
                    waiting := await watcher.fetchval(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query LIKE '%budgets%'"
                    )
                ):
                    assert runner.proc.returncode is None, runner.log.read_text()
                    await asyncio.sleep(0.05)
            await watcher.execute("SELECT pg_terminate_backend($1)", waiting)
            await locking.commit()
            await runner.wait_for("task runner ready")
            assert await runner.terminate() == 0
    finally:
        await watcher.close()
        await holder.close()
    events = runner.events()
    waits = [e for e in events if e.get("event") == WAITING]
    assert waits, runner.log.read_text()
    assert "connection" in waits[0]["error"]
    # the runner that did not get ready did not say it stopped
    names = [e.get("event") for e in events]
    assert names.count("task runner stopped") == 1


async def test_a_start_that_fails_for_another_reason_does_not_blame_redis(
    migrated_database_url: str, redis: Redis, upstream: Upstream, tmp_path: Path
) -> None:
    """An OSError at start that is neither Redis's nor the database's (here the CA bundle of
    the upstream downloads, SSL_CERT_FILE, missing) was logged as `redis unreachable`: an
    operator looked at a Redis that answered all along. The log says what failed."""
    upstream.serve(snapshot_bytes())
    env = process_env(
        migrated_database_url, upstream, SSL_CERT_FILE=str(tmp_path / "missing-ca.pem")
    )
    async with taskrunners(1, env, tmp_path) as (runner,):
        await runner.wait_for(FAILED)
        assert await runner.terminate() == 0
    events = runner.events()
    names = [str(e.get("event")) for e in events]
    assert not any("redis unreachable" in name for name in names), names
    assert WAITING not in names
    (failed, *_) = [e for e in events if e.get("event") == FAILED]
    assert failed["error"].startswith("FileNotFoundError: "), failed
    assert "task runner ready" not in names
