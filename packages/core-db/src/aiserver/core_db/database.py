"""The PostgreSQL engine (Piccolo over asyncpg) and its pool lifecycle.

    async with database(settings) as engine:
        ...  # Piccolo queries and `engine.pool` are usable here

The same context manager serves a Litestar lifespan and arq's on_startup/on_shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from piccolo.engine.postgres import PostgresEngine

from aiserver.core_db import piccolo_conf
from aiserver.core_db.connections import DatabaseUnavailable, redact_dsn
from aiserver.core_db.logging import get_logger
from aiserver.core_db.settings import CoreSettings

log = get_logger(__name__)


def get_engine() -> PostgresEngine:
    return piccolo_conf.DB


def require_pool() -> asyncpg.Pool:
    """The open pool; `DatabaseUnavailable` when there is none (a service answers 503)."""
    pool = get_engine().pool
    if pool is None:
        raise DatabaseUnavailable("the database pool is not open")
    return pool


@asynccontextmanager
async def database(settings: CoreSettings, *, lazy: bool = False) -> AsyncIterator[PostgresEngine]:
    """Open the engine's pool for `settings.database_url`; close it on exit.

    Re-entrant: an inner `database()` for the same DSN uses the open pool and leaves it open.
    `lazy` opens no connection up front, so a service can start while the database is down
    (its connections are made, and remade, as requests need them).
    """
    engine = get_engine()
    dsn = settings.database_url
    if engine.pool is not None:
        if engine.config.get("dsn") != dsn:
            raise RuntimeError(
                "the database pool is already open for another DSN: "
                f"{redact_dsn(str(engine.config.get('dsn')))}"
            )
        yield engine
        return
    engine.config = {"dsn": dsn}
    try:
        engine.pool = await asyncpg.create_pool(
            dsn=dsn,
            min_size=0 if lazy else settings.database_pool_min_size,
            max_size=settings.database_pool_max_size,
            timeout=10.0,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {exc}"
        ) from exc
    log.debug("database pool opened", database=redact_dsn(dsn))
    try:
        yield engine
    finally:
        pool, engine.pool = engine.pool, None
        if pool is not None:
            await pool.close()
        log.debug("database pool closed", database=redact_dsn(dsn))
