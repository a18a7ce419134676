"""Writing events: `usage_events`, `usage_idempotency` and `usage_outbox`.

Every function takes a connection and runs in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

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


#: The usage counts that have columns of their own (any other count is kept in `usage_other`).
COUNT_COLUMNS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


#: The SQL type of each of `EVENT_COLUMNS`.
EVENT_TYPES: Final = (
    "bigint", "timestamptz", "bigint", "timestamptz", "text", "text", "text", "text", "text",
    "text", "text", "bigint", "bigint", "bigint", "bigint", "bigint", "jsonb", "jsonb", "text",
    "numeric", "jsonb", "text[]", "text", "text[]", "bigint", "bigint", "bigint",
)  # fmt: skip
# One event in one statement (its own transaction): the key, the outbox row and the event, or
# nothing when the key is there already. $1, $2: project and occurred_at; the event's other
# columns from $3 on (its id comes from the key's row); its payload hash last.
_RECORD_ONE: Final = f"""
    WITH claimed AS (
        INSERT INTO usage_idempotency (project_id, key, payload_hash, event_id, occurred_at)
        VALUES ($1, $4, ${len(EVENT_COLUMNS)}, nextval('usage_events_id_seq'), $2)
        ON CONFLICT (project_id, key) DO NOTHING
        RETURNING event_id
    ), outbox AS (
        INSERT INTO usage_outbox (project_id, event_id, occurred_at)
        SELECT $1, event_id, $2 FROM claimed
    ), event AS (
        INSERT INTO usage_events ({", ".join(EVENT_COLUMNS)})
        SELECT $1::bigint, $2::timestamptz, claimed.event_id, {
    ", ".join(f"${n}::{t}" for n, t in enumerate(EVENT_TYPES[3:], start=3))
} FROM claimed
    )
    SELECT event_id FROM claimed
"""  # noqa: S608  (made of the constants above, never of input)


async def record_one(conn: DbConnection, row: Sequence[Any], payload_hash: bytes) -> int | None:
    """Record one event (a row in `EVENT_COLUMNS` order, its id left out) in one round trip:
    its new id, or None when its key was recorded before (see `recorded_keys`)."""
    event_id: int | None = await conn.fetchval(_RECORD_ONE, row[0], row[1], *row[3:], payload_hash)
    return event_id


_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
# The times go as microseconds since 2000-01-01 UTC (bigint[]), not as timestamptz[]: asyncpg
# encodes a timestamptz element in about 1.3 µs, an integer in a fraction of that (0.9 µs less
# per event, measured; bench/changes.md). PostgreSQL turns them back exactly: the integer
# becomes a float8 factor, exact below 2**53 µs (about 285 years either side of 2000), and
# `interval '1 microsecond' * factor` rounds to the integer itself.
_CLAIM: Final = """
    WITH claimed AS (
        INSERT INTO usage_idempotency (project_id, key, payload_hash, event_id, occurred_at)
        SELECT $1, k.key, k.hash, nextval('usage_events_id_seq'),
               TIMESTAMPTZ '2000-01-01 00:00:00+00' + k.at * INTERVAL '1 microsecond'
        FROM unnest($2::text[], $3::bytea[], $4::bigint[]) AS k(key, hash, at)
        ON CONFLICT (project_id, key) DO NOTHING
        RETURNING key, event_id, occurred_at
    ), outbox AS (
        INSERT INTO usage_outbox (project_id, event_id, occurred_at)
        SELECT $1, event_id, occurred_at FROM claimed
    )
    SELECT key, event_id FROM claimed
"""


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
        _CLAIM,
        project_id,
        keys,
        hashes,
        [(at - _PG_EPOCH) // _MICROSECOND for at in occurred],
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
    """What each of `keys` recorded, of those whose event is still kept. A key whose event is
    gone (retention dropped its month, and the partition maintenance has not deleted its keys
    yet: a run stopped between the two, or the next hourly one not come) is deleted here, in
    the caller's transaction, and left out: it can be recorded again, as it could once the
    maintenance had deleted it. (Answered `duplicate` before, it named an event that no longer
    exists, without a cost.)"""
    rows = await conn.fetch(
        """
        WITH found AS (
            SELECT i.key, i.event_id, i.payload_hash, i.occurred_at,
                   e.status, e.total_cost, e.price_version, e.id IS NOT NULL AS kept
            FROM usage_idempotency i
            LEFT JOIN usage_events e
              ON e.project_id = i.project_id AND e.occurred_at = i.occurred_at
             AND e.id = i.event_id
            WHERE i.project_id = $1 AND i.key = ANY($2::text[])
        ), gone AS (
            DELETE FROM usage_idempotency i USING found f
            WHERE NOT f.kept AND i.project_id = $1 AND i.key = f.key
        )
        SELECT key, event_id, payload_hash, occurred_at, status, total_cost, price_version
        FROM found WHERE kept
        """,
        project_id,
        keys,
    )
    return {r["key"]: RecordedKey(**dict(r)) for r in rows}


async def copy_events(
    conn: DbConnection, rows: Iterable[Sequence[Any]] | AsyncIterable[Sequence[Any]]
) -> None:
    """Write events (tuples in `EVENT_COLUMNS` order) with COPY: the fastest way in."""
    await conn.copy_records_to_table("usage_events", records=rows, columns=EVENT_COLUMNS)


@dataclass(frozen=True, slots=True)
class UnpricedModel:
    """A model name (as reported) that some events of a project could not be priced with."""

    project_id: int
    model: str
    provider: str | None
    events: int
    first_at: datetime
    last_at: datetime
    #: some of them are unpriced because the catalog did not know the model (no matched model);
    #: the others named a known model that has no price for what they used
    unknown_model: bool = True


async def unpriced_models(conn: DbConnection) -> list[UnpricedModel]:
    """Every (project, model, provider) with events kept unpriced, from their partial index:
    what a reprice looks at after the catalog changed; `unknown_model` when some of them are
    unpriced because the catalog did not know their model. (An event of a known model that has
    no price for what it used is unpriced too, with its `matched_model`.)"""
    rows = await conn.fetch(
        """
        SELECT project_id, model, provider, count(*) AS events,
               min(occurred_at) AS first_at, max(occurred_at) AS last_at,
               bool_or(matched_model IS NULL) AS unknown_model
        FROM usage_events WHERE status = 'unpriced'
        GROUP BY project_id, model, provider
        ORDER BY project_id, model, provider NULLS FIRST
        """
    )
    return [UnpricedModel(**dict(r)) for r in rows]
