"""PostgreSQL advisory locks: fleet-wide mutual exclusion for migrations and refreshes.

A session-level advisory lock lives as long as the connection that took it, so a process that
dies (even by SIGKILL) releases it when PostgreSQL notices the closed connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from aiserver.core_db.lock_keys import advisory_lock_key
from aiserver.core_db.logging import get_logger

__all__ = [
    "LockTimeout",
    "advisory_lock",
    "advisory_lock_key",
    "advisory_unlock",
    "try_advisory_lock",
]

log = get_logger(__name__)


class LockTimeout(TimeoutError):
    """The advisory lock was not granted within the allowed time."""


async def try_advisory_lock(conn: asyncpg.Connection, name: str) -> bool:
    granted: bool = await conn.fetchval("SELECT pg_try_advisory_lock($1)", advisory_lock_key(name))
    return granted


async def advisory_unlock(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", advisory_lock_key(name))


@asynccontextmanager
async def advisory_lock(
    conn: asyncpg.Connection,
    name: str,
    *,
    timeout: float,
    poll_interval: float = 0.25,
) -> AsyncIterator[None]:
    """Hold lock `name` on `conn`, waiting up to `timeout` seconds and saying so in the log."""
    deadline = time.monotonic() + timeout
    announced = False
    while not await try_advisory_lock(conn, name):
        if not announced:
            log.info("waiting for advisory lock", lock=name)
            announced = True
        if time.monotonic() >= deadline:
            raise LockTimeout(f"advisory lock {name!r} not granted within {timeout:g} s")
        await asyncio.sleep(poll_interval)
    try:
        yield
    finally:
        if not conn.is_closed():
            await advisory_unlock(conn, name)
