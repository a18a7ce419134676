"""`ai_cost_refresh_runs`: one row per refresh attempt that reached the upstream."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Final

import msgspec

from aiserver.costs.source import DEFAULT_SOURCE, decode_json, encode_json

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection
    from aiserver.costs.refresh import RefreshReport


async def record_run(conn: DbConnection, run: RefreshReport, *, started_at: datetime) -> None:
    """One row of the run; `finished_at` is the time of this statement (`clock_timestamp()`, not
    the transaction's start: an applied run writes the catalog first, in the same transaction)."""
    await conn.execute(
        """
        INSERT INTO ai_cost_refresh_runs
            (source, trigger, started_at, finished_at, outcome, http_status, fetched_bytes,
             added, changed, removed, skipped, skipped_entries, catalog_version, error)
        VALUES ($1, $2, $3, clock_timestamp(), $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13)
        """,
        run.source,
        run.trigger,
        started_at,
        str(run.outcome),
        run.http_status,
        run.fetched_bytes,
        run.added,
        run.changed,
        run.removed,
        len(run.skipped),
        encode_json(run.skipped).decode(),
        run.catalog_version,
        run.error,
    )


async def last_skipped(conn: DbConnection, source: str) -> dict[str, str]:
    """The entries skipped by the last run that read the current document: an unchanged
    document skips them again, and its run record says so without parsing it."""
    skipped = await conn.fetchval(
        """
        SELECT skipped_entries::text FROM ai_cost_refresh_runs
        WHERE source = $1 AND outcome IN ('applied', 'seeded', 'unchanged')
        ORDER BY id DESC LIMIT 1
        """,
        source,
    )
    return {} if skipped is None else dict(decode_json(skipped))


class LastRun(msgspec.Struct, frozen=True, kw_only=True):
    trigger: str
    outcome: str
    started_at: datetime
    finished_at: datetime | None
    fetched_bytes: int
    added: int
    changed: int
    removed: int
    skipped: int
    error: str | None


_LAST_RUN_COLUMNS: Final = ", ".join(LastRun.__struct_fields__)


async def last_run(conn: DbConnection, source: str = DEFAULT_SOURCE) -> LastRun | None:
    row = await conn.fetchrow(
        f"SELECT {_LAST_RUN_COLUMNS} FROM ai_cost_refresh_runs"  # noqa: S608
        " WHERE source = $1 ORDER BY id DESC LIMIT 1",
        source,
    )
    return LastRun(**dict(row)) if row else None
