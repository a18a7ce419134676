"""The PostgreSQL engine (Piccolo over asyncpg) and its pool lifecycle.

    async with database(settings) as engine:
        ...  # Piccolo queries and `engine.pool` are usable here

The same context manager serves a Litestar lifespan and arq's on_startup/on_shutdown.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg
from piccolo.engine.postgres import PostgresEngine

from aiserver.core_db import piccolo_conf
from aiserver.core_db.connections import DatabaseUnavailable, DbConnection, redact_dsn
from aiserver.core_db.logging import get_logger
from aiserver.core_db.settings import CoreSettings

log = get_logger(__name__)

_users = 0  # the blocks in `database()` now using the open pool: the last one closes it
#: Per event loop: held while a `database()` finds the pool, or opens it.
_OPENING: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _opening() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _OPENING.get(loop)
    if lock is None:
        lock = _OPENING[loop] = asyncio.Lock()
    return lock


class PoolConnection(asyncpg.Connection):
    """The pool's connections: asyncpg's, able to skip the reset query once (`lone_statements`).

    The pool resets a connection when it comes back (rollback, `pg_advisory_unlock_all()`,
    `CLOSE ALL`, `UNLISTEN *`, `RESET ALL`): a round trip, on every request. A connection that
    left no session state behind needs none of it.
    """

    __slots__ = ("_no_session_state",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._no_session_state = False

    def left_no_session_state(self) -> None:
        """The next return to the pool skips the reset query (once)."""
        self._no_session_state = True

    def get_reset_query(self) -> str:
        if self._no_session_state:
            self._no_session_state = False
            return ""
        query: str = super().get_reset_query()
        return query


@asynccontextmanager
async def lone_statements(pool: asyncpg.Pool) -> AsyncIterator[DbConnection]:
    """A pooled connection for statements, and transactions that end in the block, that leave
    no session state behind (no plain SET, LISTEN, cursor WITH HOLD, session advisory lock or
    temporary table; SET LOCAL and transaction advisory locks end with their transaction): when
    the block ends without an exception, its return to the pool skips the reset query. asyncpg
    still rolls back a transaction left open. (A pool not opened by `database()` resets as
    usual.)"""
    async with pool.acquire() as conn:
        yield conn
        mark = getattr(conn, "left_no_session_state", None)
        if mark is not None:
            mark()


def _bounded_transactions(
    timeout: float | None, idle_in_transaction: float | None
) -> dict[str, str] | None:
    bounds = {}
    if timeout is not None:
        bounds["statement_timeout"] = f"{max(1, round(timeout * 2000))}ms"
        idle_in_transaction = timeout * 2
    if idle_in_transaction is not None:
        bounds["idle_in_transaction_session_timeout"] = (
            f"{max(1, round(idle_in_transaction * 1000))}ms"
        )
    return bounds or None


def get_engine() -> PostgresEngine:
    return piccolo_conf.DB


def require_pool() -> asyncpg.Pool:
    """The open pool; `DatabaseUnavailable` when there is none (a service answers 503)."""
    pool = get_engine().pool
    if pool is None:
        raise DatabaseUnavailable("the database pool is not open")
    return pool


@asynccontextmanager
async def database(
    settings: CoreSettings,
    *,
    lazy: bool = False,
    timeout: float | None = None,
    idle_in_transaction: float | None = None,
) -> AsyncIterator[PostgresEngine]:
    """Open the engine's pool for `settings.database_url`; close it when its last user leaves.

    Re-entrant and shared: a `database()` entered while the pool is open (for the same DSN) uses
    that pool, and the pool stays open until every block using it has ended, whichever began
    first. (Two arq workers in one process, or a CLI inside a service's lifespan, each hold it.)
    The blocks share one event loop: one entered from another loop while the pool is open is a
    RuntimeError that says so.
    `lazy` opens no connection up front, so a service can start while the database is down
    (its connections are made, and remade, as requests need them).
    `timeout` (seconds) bounds both sides of a connection that goes silent (a hung peer, a
    stale NAT entry: no reset, no error): each statement waits that long for its answer, then
    fails with TimeoutError; and PostgreSQL, whose side of the connection may never hear that
    the client gave up (a partition), cancels a statement that has run twice that long
    (`statement_timeout`: a COPY waiting for its rows) and ends a transaction that has waited
    twice that long for its client's next statement (`idle_in_transaction_session_timeout`), so
    that its locks (an ingest's keys) do not hold another process's retry for longer. (Twice:
    the client gives up first, with its own error, whenever it can still hear the server.) Set
    by the block that opens the pool; None: no bound (the task runner's migrations may run
    long).
    `idle_in_transaction` (seconds), without `timeout`, is the last bound alone: PostgreSQL
    ends a transaction that has waited that long for its client's next statement, and no
    statement is bounded (the task runner's jobs: a fold's or reprice's locks are freed when its
    connection goes silent, where its statements may rightly run long).
    """
    global _users
    engine = get_engine()
    dsn = settings.database_url
    async with _opening():  # two blocks that find no pool at once must not both open one
        if engine.pool is not None:
            opened_in = getattr(engine.pool, "_loop", None)  # asyncpg's; None: not known
            if opened_in is not None and opened_in is not asyncio.get_running_loop():
                # asyncpg's connections belong to the loop that made them: used from another
                # (asyncio.run in a thread) they fail with "another operation is in progress"
                raise RuntimeError(
                    "the database pool is open in another event loop: a database() block must "
                    "run in the event loop of the block that opened the pool"
                )
            if engine.config.get("dsn") != dsn:
                raise RuntimeError(
                    "the database pool is already open for another DSN: "
                    f"{redact_dsn(str(engine.config.get('dsn')))}"
                )
        else:
            engine.config = {"dsn": dsn}
            try:
                engine.pool = await asyncpg.create_pool(
                    dsn=dsn,
                    min_size=0 if lazy else settings.database_pool_min_size,
                    max_size=settings.database_pool_max_size,
                    timeout=10.0,
                    connection_class=PoolConnection,
                    command_timeout=timeout,
                    server_settings=_bounded_transactions(timeout, idle_in_transaction),
                )
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                raise DatabaseUnavailable(
                    f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {exc}"
                ) from exc
            log.debug("database pool opened", database=redact_dsn(dsn))
        _users += 1
    try:
        yield engine
    finally:
        _users -= 1
        if _users == 0:
            pool, engine.pool = engine.pool, None
            if pool is not None:
                await pool.close()
            log.debug("database pool closed", database=redact_dsn(dsn))
