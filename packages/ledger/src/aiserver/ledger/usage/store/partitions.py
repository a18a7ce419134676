"""The partitions of `usage_events`: which exist, creating one, detaching and dropping one, and the
idempotency keys of dropped events (see `aiserver.ledger.usage.partitions` for the rules).

Each function makes its own transactions: call them on a connection that is not in one (DETACH
... CONCURRENTLY cannot run inside a transaction).

Locks (none of them waits on another in a circle, so ingest and the cron never deadlock):

- creating takes an advisory lock per partition name (two creators of one month: one creates it,
  the other then finds it attached), ACCESS SHARE on `usage_events` (`LIKE`), then SHARE UPDATE
  EXCLUSIVE to attach: inserts (ROW EXCLUSIVE) go on meanwhile; two creators of different
  months attach one after the other.
- detaching CONCURRENTLY holds SHARE UPDATE EXCLUSIVE only in two short transactions and, in
  between, waits with no lock on `usage_events` for the transactions that were using it: neither
  inserts nor the creation of a month wait for it. Interrupted in its wait, it leaves the
  partition "detach pending", which `finish_detach` completes.
- where DETACH ... CONCURRENTLY is missing (Citus), `drop_attached` drops the partition in one
  statement under a short `lock_timeout`: it needs ACCESS EXCLUSIVE on `usage_events`, and ingest
  queues behind it for at most that long; not granted, it is tried again at the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final, Literal

from aiserver.core_db.locks import advisory_lock_key
from aiserver.costs.store.metadata import CATALOG_VERSION_LOCK

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection

#: One month's partition: `usage_events_pYYYYMM`.
NAME_PATTERN: Final = r"^usage_events_p[0-9]{6}$"

TableState = Literal["attached", "detaching", "detached"]


@dataclass(frozen=True, slots=True)
class UsageTable:
    """A table named like a month's partition, in the schema of `usage_events`: attached, pending
    detach (an interrupted DETACH ... CONCURRENTLY), or detached and not dropped yet."""

    name: str
    state: TableState


async def existing_partitions(conn: DbConnection) -> list[str]:
    """The partitions attached to `usage_events` (those pending detach included), by name."""
    rows = await conn.fetch(
        """
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'usage_events'::regclass
        ORDER BY c.relname
        """
    )
    return [r["relname"] for r in rows]


async def usage_tables(conn: DbConnection) -> list[UsageTable]:
    """Every table named like a month's partition, attached or not, oldest first."""
    rows = await conn.fetch(
        """
        SELECT c.relname,
               CASE WHEN i.inhrelid IS NULL THEN 'detached'
                    WHEN i.inhdetachpending THEN 'detaching'
                    ELSE 'attached' END AS state
        FROM pg_class c
        LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'usage_events'::regclass
        WHERE c.relnamespace = (SELECT relnamespace FROM pg_class
                                WHERE oid = 'usage_events'::regclass)
          AND c.relkind = 'r'
          AND c.relname ~ $1
          AND (i.inhrelid IS NOT NULL OR NOT c.relispartition)
        ORDER BY c.relname
        """,
        NAME_PATTERN,
    )
    return [UsageTable(r["relname"], r["state"]) for r in rows]


async def create_partition(
    conn: DbConnection,
    name: str,
    start: datetime,
    end: datetime,
    *,
    dropped: Callable[[int], bool] | None = None,
) -> bool | None:
    """Create and attach the partition `name` for [start, end) unless it is attached; True when
    this call attached it. Safe under concurrency (see the module docstring for the locks).

    `dropped` (ingest's): whether retention drops the month, given the retention written down
    (`usage_retention`, in days). It is asked in the creating transaction, with
    the catalog's advisory lock held shared as an ingest transaction holds it: a maintenance
    that writes a shorter retention waits for this transaction before it drops anything, and
    one that wrote it before is read here. When it says so, nothing is made: None.

    The table is created alone and then attached, in one transaction: attaching needs SHARE
    UPDATE EXCLUSIVE on `usage_events`, which lets inserts into the other partitions go on, where
    `CREATE TABLE ... PARTITION OF` would take ACCESS EXCLUSIVE and stop every writer. Attaching
    checks the (empty) table against its bounds and makes its indexes from the parent's (its
    primary key, the GIN index of tags). A table of that name that exists but is not attached
    (detached by hand, or by a retention run that stopped before it dropped it; retention never
    drops a month that ingest accepts) is attached as it is. The partition is owned by the
    owner of `usage_events`, whichever role made it (deploy/deployment.md, "Separate database
    roles"): the creator must be a member of that role, as attaching needs its rights anyway.
    """
    quoted = _identifier(name)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_lock_key(f"ledger:{name}"))
        found = await conn.fetchrow(
            """
            SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                           WHERE i.inhparent = 'usage_events'::regclass AND c.relname = $1)
                       AS attached,
                   (SELECT relowner::regrole::text FROM pg_class
                    WHERE oid = 'usage_events'::regclass) AS owner
            """,
            name,
        )
        assert found is not None
        if found["attached"]:
            return False
        if dropped is not None:
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", CATALOG_VERSION_LOCK)
            days = await kept_retention(conn)
            if days is not None and dropped(days):
                return None
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}"
            " (LIKE usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        # owned as usage_events is (a no-op when this role owns both), so that whoever may
        # alter usage_events may alter and drop its partitions too, whichever role made them
        await conn.execute(f"ALTER TABLE {quoted} OWNER TO {found['owner']}")
        await conn.execute(
            f"ALTER TABLE usage_events ATTACH PARTITION {quoted}"
            f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
        return True


async def detach_partition(conn: DbConnection, name: str) -> None:
    """Detach a partition without blocking inserts (DETACH ... CONCURRENTLY: PostgreSQL 14+, in
    no transaction)."""
    quoted = _identifier(name)
    await conn.execute(f"ALTER TABLE usage_events DETACH PARTITION {quoted} CONCURRENTLY")


async def finish_detach(conn: DbConnection, name: str) -> None:
    """Complete a DETACH ... CONCURRENTLY that was interrupted."""
    await conn.execute(f"ALTER TABLE usage_events DETACH PARTITION {_identifier(name)} FINALIZE")


async def drop_detached(conn: DbConnection, name: str) -> None:
    """Drop a detached partition: its rows are gone at once, with no dead rows left behind."""
    await conn.execute(f"DROP TABLE IF EXISTS {_identifier(name)}")


async def drop_attached(conn: DbConnection, name: str, *, lock_timeout_ms: int) -> None:
    """Drop an attached partition in one statement (where DETACH ... CONCURRENTLY is missing).
    `asyncpg.LockNotAvailableError` when `usage_events` could not be locked within the timeout."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        await conn.execute(f"DROP TABLE IF EXISTS {_identifier(name)}")


async def citus_installed(conn: DbConnection) -> bool:
    """Whether the database runs Citus, which lacks DETACH ... CONCURRENTLY on distributed
    tables (citusdata/citus#5264)."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
    )
    return found


async def unfolded(conn: DbConnection, start: datetime, end: datetime) -> bool:
    """Whether the outbox holds a row of an event in [start, end): one the rollups have not
    counted yet. (The outbox holds only the rows not folded yet, so the scan is short.)"""
    query = "SELECT EXISTS (SELECT FROM usage_outbox WHERE occurred_at >= $1 AND occurred_at < $2)"
    return bool(await conn.fetchval(query, start, end))


async def forget_keys(conn: DbConnection, before: datetime, limit: int) -> int:
    """Delete up to `limit` idempotency keys of events before `before`: how many were deleted.
    In batches, so that no one statement holds a month of keys; by primary key, which also
    holds on Citus (a `ctid` names a row of one shard only)."""
    status = await conn.execute(
        """
        DELETE FROM usage_idempotency WHERE (project_id, key) IN (
            SELECT project_id, key FROM usage_idempotency WHERE occurred_at < $1 LIMIT $2)
        """,
        before,
        limit,
    )
    return int(status.rsplit(" ", 1)[1])


async def record_retention(conn: DbConnection, retention_days: int) -> int | None:
    """Write down the retention the partitions are kept by (`usage_retention`), for ingest to
    refuse what the maintenance would drop: in a transaction of its own, before any drop.
    Returns the retention written down before (None: none was). Call it under the
    maintenance's lock (one writer at a time)."""
    before = await kept_retention(conn)
    if before != retention_days:
        await conn.execute(
            """
            INSERT INTO usage_retention (retention_days) VALUES ($1)
            ON CONFLICT (singleton) DO UPDATE
            SET retention_days = EXCLUDED.retention_days, recorded_at = now()
            """,
            retention_days,
        )
    return before


async def kept_retention(conn: DbConnection) -> int | None:
    """The retention the partitions are kept by, as last written down; None: never."""
    days: int | None = await conn.fetchval("SELECT retention_days FROM usage_retention")
    return days


async def wait_for_ingest(conn: DbConnection) -> None:
    """Return once every ingest transaction in flight has ended: each holds the catalog's
    advisory lock shared from its start to its end (`ledger_ingest_start_v4`), which this takes
    exclusively for an instant. An ingest transaction that begins after it reads the retention
    written down before it."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", CATALOG_VERSION_LOCK)


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise ValueError(f"not a partition name: {name!r}")
    return f'"{name}"'


async def table_sizes(conn: DbConnection, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """{name: (estimated rows, bytes with indexes and TOAST)} of tables beside `usage_events`.
    The rows are the statistics' count of live rows, which inserts keep current; the planner's
    estimate (`reltuples`) waits for an ANALYZE, and a new month has none yet."""
    rows = await conn.fetch(
        """
        SELECT c.relname,
               coalesce(s.n_live_tup, greatest(c.reltuples, 0))::bigint AS rows_estimate,
               pg_total_relation_size(c.oid)::bigint AS bytes
        FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
        WHERE c.relname = ANY($1::text[])
          AND c.relnamespace = (SELECT relnamespace FROM pg_class
                                WHERE oid = 'usage_events'::regclass)
        """,
        list(names),
    )
    return {r["relname"]: (r["rows_estimate"], r["bytes"]) for r in rows}
