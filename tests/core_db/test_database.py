"""The pool that `database()` opens: shared by the blocks that use it and closed by the last
one to end; a connection comes back reset, unless it ran lone statements only
(`lone_statements`), which skips the reset query once."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from aiserver.core_db.connections import DatabaseUnavailable, transaction
from aiserver.core_db.database import PoolConnection, database, lone_statements, require_pool

from ..conftest import Settings, replace_settings

SHOW = "SELECT current_setting('application_name')"


async def test_two_blocks_that_find_no_pool_at_once_open_one_and_share_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both find no pool while the first still waits for its connections: before, each opened
    one, the second replaced the first (never closed), and the first to end closed the pool the
    other was using."""
    opened: list[asyncpg.Pool] = []
    create_pool = asyncpg.create_pool

    async def slow_create_pool(*args: object, **kwargs: object) -> asyncpg.Pool:
        await asyncio.sleep(0.05)  # the connections take a while
        pool = await create_pool(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(pool)
        return pool

    monkeypatch.setattr(asyncpg, "create_pool", slow_create_pool)
    seen: list[asyncpg.Pool] = []
    both_in = asyncio.Barrier(2)

    async def block(stay: float) -> int:
        async with database(settings.core):
            seen.append(require_pool())
            await both_in.wait()
            await asyncio.sleep(stay)
            value: int = await require_pool().fetchval("SELECT 7")
            return value

    assert await asyncio.gather(block(0.0), block(0.1)) == [7, 7]
    assert len(opened) == 1
    assert seen == [opened[0], opened[0]]
    assert opened[0].is_closing()
    with pytest.raises(DatabaseUnavailable):
        require_pool()


async def test_the_pool_stays_open_until_the_last_block_using_it_ends(settings: Settings) -> None:
    """Two arq workers in one process share the pool: the one that opened it may end first
    while the other is still applying migrations (a fresh-clone CI run once failed on that,
    with 'pool is closing')."""
    opened = asyncio.Event()
    first_done = asyncio.Event()

    async def first() -> None:
        async with database(settings.core):
            opened.set()
            await first_done.wait()
        # the block that opened the pool has ended: the other one still uses it

    async def second() -> int:
        await opened.wait()
        async with database(settings.core) as engine:
            pool = require_pool()
            first_done.set()
            await asyncio.sleep(0.05)
            assert engine.pool is pool
            assert not pool.is_closing()
            value: int = await pool.fetchval("SELECT 41 + 1")
        return value

    _, value = await asyncio.gather(first(), second())
    assert value == 42
    # the last block closed it
    with pytest.raises(DatabaseUnavailable, match="not open"):
        require_pool()
    # nested, as a CLI inside a service's lifespan: the inner end leaves it open
    async with database(settings.core):
        async with database(settings.core):
            outer = require_pool()
        assert await outer.fetchval("SELECT 1") == 1
    with pytest.raises(DatabaseUnavailable):
        require_pool()
    assert outer.is_closing()


async def _fail_in_a_lone_block(pool: asyncpg.Pool) -> None:
    async with lone_statements(pool) as conn:
        await conn.execute("SET application_name = 'then-failed'")
        raise RuntimeError("failed")


async def test_a_block_in_another_event_loop_is_refused_while_the_pool_is_open(
    settings: Settings,
) -> None:
    """asyncpg's connections belong to their loop: a block of another loop (asyncio.run in a
    thread) that took the open pool failed later, with "another operation is in progress"."""

    async def elsewhere() -> None:
        async with database(settings.core):
            await require_pool().fetchval("SELECT 1")

    async with database(settings.core):
        with pytest.raises(RuntimeError, match="the database pool is open in another event loop"):
            await asyncio.to_thread(asyncio.run, elsewhere())
        assert await require_pool().fetchval("SELECT 1") == 1  # this loop's blocks go on
    async with database(settings.core):  # the count of users was left right
        assert await require_pool().fetchval("SELECT 2") == 2
    with pytest.raises(DatabaseUnavailable):
        require_pool()  # and the last block closed the pool


async def test_lone_statements_skip_the_reset_query_once_and_only_when_they_succeed(
    settings: Settings,
) -> None:
    one = replace_settings(settings, database_pool_min_size=1, database_pool_max_size=1)
    async with database(one.core):
        pool = require_pool()
        async with pool.acquire() as conn:
            assert isinstance(conn._con, PoolConnection)
            default = await conn.fetchval(SHOW)
            await conn.execute("SET application_name = 'set-in-an-ordinary-block'")
        # an ordinary return to the pool resets the session (RESET ALL among the rest)
        assert await pool.fetchval(SHOW) == default
        # the contract broken on purpose, to see the reset skipped: a SET survives the return
        async with lone_statements(pool) as conn:
            await conn.execute("SET application_name = 'left-behind'")
        async with pool.acquire() as conn:
            assert await conn.fetchval(SHOW) == "left-behind"
        # ... once: the return after that resets again
        assert await pool.fetchval(SHOW) == default
        # a block that fails is reset as usual
        with pytest.raises(RuntimeError, match="failed"):
            await _fail_in_a_lone_block(pool)
        assert await pool.fetchval(SHOW) == default
        # a transaction left open in a lone block is still rolled back by asyncpg
        async with lone_statements(pool) as conn:
            await conn.execute("BEGIN")
            await conn.execute("SELECT 1")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()


async def test_a_timeout_bounds_statements_on_both_sides_and_ends_a_transaction_left_waiting(
    settings: Settings,
) -> None:
    """A connection that goes silent held an API request, and its transaction's locks (an
    ingest's keys, which another replica's retry waits for), without end. With `timeout`:
    asyncpg gives up on a statement's answer, and PostgreSQL (after twice as long, so that the
    client's own error comes first) cancels a statement and ends a transaction that waits for
    its client, since it may never hear that the client gave up."""
    async with database(settings.core, timeout=1.0):
        pool = require_pool()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "2s"
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "2s"
            with pytest.raises(TimeoutError):
                await conn.execute("SELECT pg_sleep(5)")
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("SELECT 1")
            await asyncio.sleep(3.5)  # waits for its client's next statement longer than 2 s
            ended = await asyncpg.connect(settings.core.database_url)
            try:
                found = await ended.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
                )
            finally:
                await ended.close()
            assert found == 0  # PostgreSQL ended the session, and its transaction with it
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
                await conn.execute("SELECT 1")
    # no timeout: PostgreSQL's defaults (none)
    async with database(settings.core), require_pool().acquire() as conn:
        assert await conn.fetchval("SHOW statement_timeout") == "0"
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "0"


async def test_idle_in_transaction_alone_ends_a_transaction_left_waiting_and_no_statement(
    settings: Settings,
) -> None:
    """The task runner's bound: a transaction waiting for its client is ended, a statement that
    runs long is not (a rebuild's, a partition's)."""
    async with database(settings.core, idle_in_transaction=1.0):
        pool = require_pool()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "0"
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "1s"
            await conn.execute("SELECT pg_sleep(1.5)")  # longer than the bound: it runs
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("SELECT 1")
            await asyncio.sleep(2.5)  # waits for its client's next statement longer than 1 s
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
                await conn.execute("SELECT 1")
    async with database(settings.core), require_pool().acquire() as conn:
        assert await conn.fetchval("SHOW statement_timeout") == "0"
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "0"


async def _ended_in(
    block: Any, conn: asyncpg.Connection, killer: asyncpg.Connection, pid: int
) -> None:
    """In `block` (a transaction of `conn`), a statement whose backend `killer` terminates."""
    async with block:
        sleeping = asyncio.ensure_future(conn.execute("SELECT pg_sleep(30)"))
        async with asyncio.timeout(20):
            while not await killer.fetchval(
                "SELECT pg_terminate_backend($1)"
                " FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'",
                pid,
            ):
                await asyncio.sleep(0.02)
        await sleeping


@pytest.mark.parametrize("ours", [True, False])
async def test_a_transaction_whose_connection_is_ended_raises_why(
    migrated_database_url: str, ours: bool
) -> None:
    """PostgreSQL ending a connection in a transaction (a restart, pg_terminate_backend): with
    `conn.transaction()`, asyncpg's rollback on the closed connection raised InterfaceError in
    place of the error that said why; `transaction()` raises that error."""
    conn = await asyncpg.connect(migrated_database_url)
    killer = await asyncpg.connect(migrated_database_url)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        block = transaction(conn) if ours else conn.transaction()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)) as raised:
            await _ended_in(block, conn, killer, pid)
    finally:
        await killer.close()
        await conn.close()
    said = "terminating connection due to administrator command" in str(raised.value)
    assert said is ours, repr(raised.value)
