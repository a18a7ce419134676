"""A connection to PostgreSQL of its own, and the error when there is none.

Light on purpose (asyncpg only, no Piccolo, no structlog): a command-line tool that only needs one
connection imports this and starts in tens of milliseconds. The pool and the ORM engine are in
`aiserver.core_db.database`.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from aiserver.core_db.errors import Unavailable
from aiserver.core_db.settings import CoreSettings

#: The largest BIGINT: an id beyond it names no row (and asyncpg refuses to send it).
MAX_BIGINT: Final = 2**63 - 1

#: A connection of our own or one borrowed from the pool: queries take either.
DbConnection: TypeAlias = asyncpg.Connection | PoolConnectionProxy


class DatabaseUnavailable(Unavailable, ConnectionError):
    """PostgreSQL could not be reached; the message says where and why."""


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for logs and error messages."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest:
        return dsn
    credentials, _, location = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{location}" if user else f"{scheme}://{location}"


async def connect(settings: CoreSettings, *, timeout: float = 10.0) -> asyncpg.Connection:
    """A dedicated connection outside the pool (advisory locks, LISTEN, one-off commands)."""
    try:
        return await asyncpg.connect(dsn=settings.database_url, timeout=timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact_dsn(settings.database_url)}: {exc}"
        ) from exc
