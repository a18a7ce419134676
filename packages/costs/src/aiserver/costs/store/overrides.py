"""`ai_cost_overrides`: the operator's prices, one row per (provider, model).

The rules (what a name resolves to, which fields, the version bump) are
`aiserver.costs.overrides`'; here are the statements.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiserver.costs.source import decode_json, encode_json

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection


@dataclass(frozen=True, slots=True)
class Override:
    id: int
    provider: str
    model: str
    prices: Mapping[str, Any]
    reason: str
    created_at: datetime


async def read_overrides(conn: DbConnection) -> list[Override]:
    rows = await conn.fetch(
        "SELECT id, provider, model, prices::text AS prices, reason, created_at"
        " FROM ai_cost_overrides ORDER BY id"
    )
    return [
        Override(
            id=r["id"],
            provider=r["provider"],
            model=r["model"],
            prices=decode_json(r["prices"]),
            reason=r["reason"],
            created_at=r["created_at"],
        )
        for r in rows
    ]


async def count_overrides(conn: DbConnection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM ai_cost_overrides")
    return count


async def upsert_override(
    conn: DbConnection, *, provider: str, model: str, prices: Mapping[str, Decimal], reason: str
) -> Override:
    """Create the override of (provider, model), or replace its prices and reason."""
    row = await conn.fetchrow(
        """
        INSERT INTO ai_cost_overrides (provider, model, prices, reason)
        VALUES ($1, $2, $3::jsonb, $4)
        ON CONFLICT (provider, model)
        DO UPDATE SET prices = EXCLUDED.prices, reason = EXCLUDED.reason, created_at = now()
        RETURNING id, created_at
        """,
        provider,
        model,
        encode_json(dict(prices)).decode(),
        reason,
    )
    assert row is not None  # INSERT ... RETURNING always returns the row
    return Override(
        id=row["id"],
        provider=provider,
        model=model,
        prices=prices,
        reason=reason,
        created_at=row["created_at"],
    )


async def delete_override(conn: DbConnection, override_id: int) -> bool:
    """Delete the override; False when there was none with that id."""
    deleted = await conn.fetchval(
        "DELETE FROM ai_cost_overrides WHERE id = $1 RETURNING id", override_id
    )
    return deleted is not None
