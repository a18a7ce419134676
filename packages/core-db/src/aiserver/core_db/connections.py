"""A connection to PostgreSQL of its own, and the error when there is none.

Light on purpose (asyncpg only, no Piccolo, no structlog): a command-line tool that only needs one
connection imports this and starts in tens of milliseconds. The pool and the ORM engine are in
`aiserver.core_db.database`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from aiserver.core_db.errors import Unavailable
from aiserver.core_db.settings import CoreSettings, redact_url

#: The largest BIGINT: an id beyond it names no row (and asyncpg refuses to send it).
MAX_BIGINT: Final = 2**63 - 1

#: A connection of our own or one borrowed from the pool: queries take either.
DbConnection: TypeAlias = asyncpg.Connection | PoolConnectionProxy


#: What asyncpg raises for a misuse of a connection, and also for a statement on a connection
#: that PostgreSQL ended just before it (`_cut` tells which).
_MISUSE_OR_CUT: Final = (asyncpg.InterfaceError, asyncpg.InternalClientError)
#: How often, and how far apart, `_cut` looks at whether a connection closed: 1 s in
#: all, on the way to a failure only.
_CLOSE_LOOKS: Final = 100
_CLOSE_LOOK_S: Final = 0.01
#: Why a statement failed on a connection that PostgreSQL ended while it was idle (asyncpg drops
#: the server's own words then: see `_cut`).
_CLOSED_BETWEEN: Final = "the server closed the connection between two statements"


class DatabaseUnavailable(Unavailable, ConnectionError):
    """PostgreSQL could not be reached; the message says where and why."""


#: The DSN without its password, for logs and error messages (`settings.redact_url`).
redact_dsn: Final = redact_url


async def connect(settings: CoreSettings, *, timeout: float = 10.0) -> asyncpg.Connection:
    """A dedicated connection outside the pool (advisory locks, LISTEN, one-off commands)."""
    try:
        return await asyncpg.connect(dsn=settings.database_url, timeout=timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact_dsn(settings.database_url)}: {exc}"
        ) from exc


@contextlib.asynccontextmanager
async def transaction(conn: DbConnection) -> AsyncIterator[None]:
    """`conn.transaction()`, except on a connection PostgreSQL ended under it: asyncpg's
    rollback then raises InterfaceError ("the underlying connection is closed") in place of
    the error that said why (the backend terminated, the server shutting down), which a
    caller that records or shows the error would lose. That error is raised as it is."""
    started = conn.transaction()
    await started.start()
    try:
        yield
    except BaseException:
        if not conn.is_closed():
            await started.rollback()
        raise
    await started.commit()


@contextlib.asynccontextmanager
async def lost_if_cut(conn: DbConnection) -> AsyncIterator[None]:
    """Statements on `conn` whose connection PostgreSQL ended just before them raise
    `asyncpg.ConnectionDoesNotExistError` (a lost connection: a command prints one line, the
    API answers 503), not the InterfaceError or InternalClientError asyncpg raised (`_cut`);
    a misuse of an open connection keeps its error."""
    try:
        yield
    except _MISUSE_OR_CUT as exc:
        if (cut := await _cut(conn, exc)) is None:
            raise
        raise cut from exc


async def _cut(conn: DbConnection, exc: Exception) -> asyncpg.ConnectionDoesNotExistError | None:
    """What to raise from `exc`, a `_MISUSE_OR_CUT` that a statement on `conn` raised, when it
    means that the connection was lost: `conn` is closed, or closes within `_CLOSE_LOOKS` looks.
    None when it is a misuse of an open connection, or asyncpg's DataError (input it could not
    encode: nothing was sent), which stay as they are (a bug shows its traceback).

    When PostgreSQL ends a connection that is idle between two statements (a restart,
    pg_terminate_backend, an idle timeout), it sends a FATAL ErrorResponse, then closes the
    socket. When asyncpg reads that message before the close, it takes it as out of step (its
    `CoreProtocol._read_server_messages`, in the idle state: "cannot process message 'E'"),
    drops it, and waits for a ReadyForQuery. A statement sent before the close is read fails
    without saying why. A BEGIN or a query raises InternalClientError "cannot switch to state
    N; another operation (2) is in progress", and asyncpg aborts the connection. A COPY raises
    that same error but leaves its operation half started (`BaseProtocol.copy_in` sets its
    waiter before `_copy_in` raises, outside its `try`), so the ROLLBACK after it raises
    InterfaceError "cannot perform operation: another operation is in progress" while the
    connection still looks open: its close comes with the next read of the socket. Hence the
    looks, never taken for a statement that succeeded. A connection that the pool took back
    when it closed (its proxy detached: any call on it raises InterfaceError) is closed."""
    if isinstance(exc, ValueError):  # asyncpg's DataError (and ClientConfigurationError)
        return None
    for look in range(_CLOSE_LOOKS):
        try:
            closed = conn.is_closed()
        except asyncpg.InterfaceError:  # released: the pool took it back when it closed
            closed = True
        if closed:
            return asyncpg.ConnectionDoesNotExistError(_CLOSED_BETWEEN)
        if look < _CLOSE_LOOKS - 1:
            await asyncio.sleep(_CLOSE_LOOK_S)
    return None
