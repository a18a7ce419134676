"""The real fold, as the spend tests call it: on a pool or a connection, everything in the
outbox, or one batch of its first `limit` rows (to leave events on both sides of the line
between rollups and the unfolded tail)."""

from __future__ import annotations

import asyncpg

from aiserver.ledger.spend import folding


async def fold_all(db: asyncpg.Pool | asyncpg.Connection, limit: int | None = None) -> None:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            await fold_all(conn, limit)
        return
    if limit is None:
        await folding.fold_all(db)
    else:
        await folding.fold(db, limit=limit)
