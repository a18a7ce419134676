"""`ai_cost_overrides`: the operator's prices, one row per override over its span of time.

A row applies from `valid_from` until `valid_to` (NULL: current). At most one row of a model is
current (a partial unique index on `model`, the key pricing finds an override by; `provider`
plays no part in it). A replacement closes the current row and opens a new one; a deletion closes
it. No row is ever deleted or changed but for its closing, so the history
says which override priced a call of any time.

The rules (what a name resolves to, which fields, the lock, the version bump) are
`aiserver.costs.overrides`'; here are the statements. The writes must run inside a transaction
that holds the catalog version's lock (`metadata.lock_catalog_version`): it makes two writers of
one model wait for each other, so that the second closes what the first opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from aiserver.costs.source import decode_json, encode_json

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection


@dataclass(frozen=True, slots=True)
class Override:
    id: int
    provider: str
    model: str
    prices: Mapping[str, Any]
    reason: str
    created_at: datetime
    valid_from: datetime
    valid_to: datetime | None = None  # None: current

    def valid_at(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)


_COLUMNS: Final = (
    "id, provider, model, prices::text AS prices, reason, created_at, valid_from, valid_to"
)


def _override(row: asyncpg.Record) -> Override:
    return Override(**{**dict(row), "prices": decode_json(row["prices"])})


async def read_overrides(conn: DbConnection, *, history: bool = False) -> list[Override]:
    """The current overrides by id; with `history`, the closed ones too."""
    where = "" if history else " WHERE valid_to IS NULL"
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM ai_cost_overrides{where} ORDER BY id")  # noqa: S608
    return [_override(r) for r in rows]


async def read_override(conn: DbConnection, override_id: int) -> Override | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM ai_cost_overrides WHERE id = $1",  # noqa: S608
        override_id,
    )
    return None if row is None else _override(row)


async def count_overrides(conn: DbConnection) -> int:
    """How many overrides are current."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM ai_cost_overrides WHERE valid_to IS NULL"
    )
    return count


async def replace_override(
    conn: DbConnection,
    *,
    provider: str,
    model: str,
    prices: Mapping[str, Decimal],
    reason: str,
    valid_from: datetime | None = None,
) -> Override:
    """Close the current override of `model`, if any, whatever its provider, and open a new one
    from the same instant: now, or `valid_from` (back-dated: the caller has checked that no
    override of the model reaches past it, `history_end`). Call under the catalog version's lock
    (see the module)."""
    # clock_timestamp(), not now(): now() is when the transaction began, which may be before the
    # other writer (whose row this closes) began, and a row would then end before it started.
    # GREATEST keeps a span whole if the clock steps back.
    closed_at = await conn.fetchval(
        """
        UPDATE ai_cost_overrides
        SET valid_to = GREATEST(COALESCE($2::timestamptz, clock_timestamp()), valid_from)
        WHERE model = $1 AND valid_to IS NULL
        RETURNING valid_to
        """,
        model,
        valid_from,
    )
    # created_at is when it was set; valid_from, when it applies from (the same unless
    # back-dated)
    row = await conn.fetchrow(
        f"""
        INSERT INTO ai_cost_overrides (provider, model, prices, reason, created_at, valid_from)
        SELECT $1, $2, $3::jsonb, $4,
               CASE WHEN $6::timestamptz IS NULL THEN t.at ELSE clock_timestamp() END, t.at
        FROM (SELECT COALESCE($6::timestamptz, $5::timestamptz, clock_timestamp()) AS at) AS t
        RETURNING {_COLUMNS}
        """,  # noqa: S608
        provider,
        model,
        encode_json(dict(prices)).decode(),
        reason,
        closed_at,
        valid_from,
    )
    assert row is not None  # INSERT ... RETURNING always returns the row
    return _override(row)


async def history_end(conn: DbConnection, model: str) -> datetime | None:
    """The latest instant the overrides of `model` reach: the start of the current one, or the
    end of the latest closed one; None when the model has had none. A back-dated override may
    begin no earlier: it may cut the current one short, never rewrite a closed one."""
    end: datetime | None = await conn.fetchval(
        "SELECT max(GREATEST(valid_from, valid_to)) FROM ai_cost_overrides WHERE model = $1",
        model,
    )
    return end


async def close_override(conn: DbConnection, override_id: int) -> datetime | None:
    """Close the override if it is current: the time it closed, else None (closed or unknown).
    Call under the catalog version's lock (see the module)."""
    closed_at: datetime | None = await conn.fetchval(
        """
        UPDATE ai_cost_overrides SET valid_to = GREATEST(clock_timestamp(), valid_from)
        WHERE id = $1 AND valid_to IS NULL
        RETURNING valid_to
        """,
        override_id,
    )
    return closed_at
