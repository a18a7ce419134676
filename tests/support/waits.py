"""Waiting for another session to reach a point, as pg_stat_activity shows it."""

from __future__ import annotations

import asyncio

import asyncpg

#: How long a wait may take before the test fails saying what never happened.
WAIT_S = 30.0


async def waiting_for_a_lock(pool: asyncpg.Pool, query: str = "") -> None:
    """Until a backend of this database running `query` (a prefix; any query when empty)
    waits for a lock."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() AND query LIKE $1",
                f"{query}%",
            ):
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"no statement {query!r} came to wait for a lock") from None


async def running(pool: asyncpg.Pool, conn: asyncpg.Connection, query: str) -> None:
    """Until `conn`'s session is running a statement whose text holds `query`."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'"
                " AND query LIKE $2",
                conn.get_server_pid(),
                f"%{query}%",
            ):
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"the session never ran {query!r}") from None
