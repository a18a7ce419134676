"""All SQL on `usage_events`, `usage_idempotency` and `usage_outbox`, and on their partitions.

Every function takes a connection and runs in the caller's transaction, except the partition
functions, which run their own short transactions (see `aiserver.ledger.usage.partitions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from aiserver.core_db.locks import advisory_lock_key

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection

#: The columns of a recorded event, in the order `copy_events` writes them.
EVENT_COLUMNS: Final = (
    "project_id",
    "occurred_at",
    "id",
    "received_at",
    "event_key",
    "model",
    "provider",
    "matched_model",
    "matched_provider",
    "usage_format",
    "service_tier",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "usage_other",
    "tags",
    "status",
    "total_cost",
    "components",
    "unpriced",
    "pricing_note",
    "suggestions",
    "price_version",
    "catalog_version",
    "override_id",
)


async def claim_keys(
    conn: DbConnection,
    project_id: int,
    keys: Sequence[str],
    hashes: Sequence[bytes],
    occurred: Sequence[datetime],
) -> dict[str, int]:
    """Insert the idempotency rows of keys not recorded before (with their outbox rows), giving
    each a new event id: {key: event id} of the keys that were new.

    A key that another transaction holds uncommitted waits for it, then counts as recorded if
    that one committed. Callers pass keys sorted, so that two requests that share keys take
    their locks in one order and never deadlock.
    """
    rows = await conn.fetch(
        """
        WITH claimed AS (
            INSERT INTO usage_idempotency (project_id, key, payload_hash, event_id, occurred_at)
            SELECT $1, k.key, k.hash, nextval('usage_events_id_seq'), k.occurred_at
            FROM unnest($2::text[], $3::bytea[], $4::timestamptz[]) AS k(key, hash, occurred_at)
            ON CONFLICT (project_id, key) DO NOTHING
            RETURNING key, event_id, occurred_at
        ), outbox AS (
            INSERT INTO usage_outbox (project_id, event_id, occurred_at)
            SELECT $1, event_id, occurred_at FROM claimed
        )
        SELECT key, event_id FROM claimed
        """,
        project_id,
        keys,
        hashes,
        occurred,
    )
    return {r["key"]: r["event_id"] for r in rows}


@dataclass(frozen=True, slots=True)
class RecordedKey:
    """What an earlier report of a key recorded."""

    key: str
    event_id: int
    payload_hash: bytes
    occurred_at: datetime
    status: str | None
    total_cost: Decimal | None
    price_version: int | None


async def recorded_keys(
    conn: DbConnection, project_id: int, keys: Sequence[str]
) -> dict[str, RecordedKey]:
    rows = await conn.fetch(
        """
        SELECT i.key, i.event_id, i.payload_hash, i.occurred_at,
               e.status, e.total_cost, e.price_version
        FROM usage_idempotency i
        LEFT JOIN usage_events e
          ON e.project_id = i.project_id AND e.occurred_at = i.occurred_at AND e.id = i.event_id
        WHERE i.project_id = $1 AND i.key = ANY($2::text[])
        """,
        project_id,
        keys,
    )
    return {r["key"]: RecordedKey(**dict(r)) for r in rows}


async def copy_events(conn: DbConnection, rows: Iterable[Sequence[Any]]) -> None:
    """Write events (tuples in `EVENT_COLUMNS` order) with COPY: the fastest way in."""
    await conn.copy_records_to_table("usage_events", records=rows, columns=EVENT_COLUMNS)


# -- partitions ------------------------------------------------------------------------------


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
