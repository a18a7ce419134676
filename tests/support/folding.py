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


#: What a fold statement's text holds (its claim), to see it running.
FOLD_CLAIM = "FOR UPDATE SKIP LOCKED"


#: Outbox rows ahead of a project's, for a fold that is to be caught mid-statement: its claim
#: takes about 1.5 s to pass them on a quiet machine here (300,000 rows, half a second, proved
#: too short on a machine busy with other test runs).
BACKLOG = 1_000_000


async def outbox_backlog(pool: asyncpg.Pool, rows: int = BACKLOG) -> None:
    """`rows` outbox rows of project 0 (no events behind them), ahead of every other project's
    in key order (and on disk, when written before the others): a fold's claim takes a while
    to pass them."""
    await pool.execute(
        "INSERT INTO usage_outbox (project_id, event_id, occurred_at)"
        " SELECT 0, g, '2026-11-25T10:00:00Z' FROM generate_series(1, $1::int) AS g",
        rows,
    )


async def still_folding(pool: asyncpg.Pool, folder: asyncpg.Connection) -> None:
    """That the fold statement `folder` is running has not ended: what a test did meanwhile
    came before the fold's end, on the server's clock. (The fold's task may be done or not: a
    finished statement's answer may wait in the socket for the event loop.)"""
    active = await pool.fetchval(
        "SELECT state = 'active' FROM pg_stat_activity WHERE pid = $1", folder.get_server_pid()
    )
    assert active, (
        "the fold passed its backlog first: make BACKLOG (tests/support/folding.py) larger"
    )
