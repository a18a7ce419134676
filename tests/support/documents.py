"""Documents for the tests of their conversion job, and another session in its way."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg

from aiserver.core_db.connections import DbConnection
from aiserver.documents import store


async def note(conn: DbConnection) -> uuid.UUID:
    """A small text document, uploaded (queued)."""
    return await store.create_document(
        conn, filename="note.txt", content_type="text/plain", kind="txt", data=b"hello"
    )


@contextlib.asynccontextmanager
async def row_locked(database_url: str, document_id: uuid.UUID) -> AsyncIterator[None]:
    """Another database session holds the document's row (`FOR UPDATE`) until the block ends."""
    locker = await asyncpg.connect(database_url)
    try:
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM documents WHERE id = $1 FOR UPDATE", document_id)
            yield
    finally:
        await locker.close()


async def _lock_waiting(database_url: str, statement: str, aggregate: str) -> Any:
    """`aggregate` (an SQL aggregate of ours) over the sessions waiting for a lock in a
    statement that holds `statement`."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            f"""
            SELECT {aggregate} FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event_type = 'Lock'
              AND position($1 in query) > 0
            """,  # noqa: S608 (aggregate is one of this module's two)
            statement,
        )
    finally:
        await conn.close()


async def lock_waits(database_url: str, statement: str) -> int:
    """The sessions waiting for a lock in a statement that holds `statement`."""
    waiting: int = await _lock_waiting(database_url, statement, "count(*)")
    return waiting


async def lock_wait_began(database_url: str, statement: str) -> datetime | None:
    """When the statement holding `statement` that waits for a lock began (PostgreSQL's clock),
    or None while no session waits in one."""
    began: datetime | None = await _lock_waiting(database_url, statement, "min(query_start)")
    return began
