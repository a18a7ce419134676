"""The partitions of `usage_events`: which exist, creating one, dropping one, and the
idempotency keys of dropped events. Each function runs its own short transaction (see
`aiserver.ledger.usage.partitions` for the rules).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from aiserver.core_db.locks import advisory_lock_key

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection


async def existing_partitions(conn: DbConnection) -> list[str]:
    rows = await conn.fetch(
        """
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'usage_events'::regclass
        ORDER BY c.relname
        """
    )
    return [r["relname"] for r in rows]


async def create_partition(conn: DbConnection, name: str, start: datetime, end: datetime) -> bool:
    """Create and attach the partition `name` for [start, end) unless it exists; True when this
    call created it. Safe under concurrency: one transaction-scoped advisory lock per name.

    The table is created alone and then attached: attaching takes a lock that lets concurrent
    inserts into the other partitions go on, where `CREATE TABLE ... PARTITION OF` would block
    every writer of `usage_events` while it waits.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_lock_key(f"ledger:{name}"))
        exists = await conn.fetchval(
            """
            SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                           WHERE i.inhparent = 'usage_events'::regclass AND c.relname = $1)
            """,
            name,
        )
        if exists:
            return False
        quoted = _identifier(name)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}"
            " (LIKE usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        await conn.execute(
            f"ALTER TABLE usage_events ATTACH PARTITION {quoted}"
            f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
        return True


async def drop_partition(conn: DbConnection, name: str) -> None:
    """Drop a partition whole: its events are gone at once, with no dead rows left behind."""
    await conn.execute(f"DROP TABLE IF EXISTS {_identifier(name)}")


async def forget_keys(conn: DbConnection, before: datetime, limit: int) -> int:
    """Delete up to `limit` idempotency keys of events before `before`: how many were deleted.
    In batches, so that no one statement holds a month of keys."""
    status = await conn.execute(
        """
        DELETE FROM usage_idempotency WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM usage_idempotency WHERE occurred_at < $1 LIMIT $2))
        """,
        before,
        limit,
    )
    return int(status.rsplit(" ", 1)[1])


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise ValueError(f"not a partition name: {name!r}")
    return f'"{name}"'
