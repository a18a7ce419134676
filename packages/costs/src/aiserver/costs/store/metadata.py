"""`ai_cost_metadata`: a source's refresh state and the catalog version, with its NOTIFY."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

from aiserver.core_db.lock_keys import advisory_lock_key
from aiserver.costs.source import DEFAULT_SOURCE, decode_json, encode_json
from aiserver.costs.urls import redact_url

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection

#: The channel of the catalog's NOTIFY; its payload is `<source>:<catalog version>`.
NOTIFY_CHANNEL: Final = "aiserver_catalog"
#: The advisory lock a change of the catalog version takes exclusive (`lock_catalog_version`)
#: and an ingest's transaction shared (the ledger's `ledger_ingest_start_v2`), as does a reprice
#: batch (`hold_catalog_version`): no new version commits while one that read it is still open.
CATALOG_VERSION_LOCK: Final = advisory_lock_key("costs:catalog-version")


class SourceState(msgspec.Struct, frozen=True, kw_only=True):
    """The `ai_cost_metadata` row of a source."""

    source: str
    url: str
    last_checked_at: datetime | None
    last_success_at: datetime | None
    last_changed_at: datetime | None
    etag: str | None
    last_modified: str | None
    content_hash: str | None
    body_hash: str | None
    model_count: int
    alias_count: int
    last_error: str | None
    last_error_at: datetime | None
    catalog_version: int


_STATE_COLUMNS: Final = ", ".join(SourceState.__struct_fields__)


async def read_state(conn: DbConnection, source: str = DEFAULT_SOURCE) -> SourceState | None:
    row = await conn.fetchrow(
        f"SELECT {_STATE_COLUMNS} FROM ai_cost_metadata WHERE source = $1",  # noqa: S608
        source,
    )
    return None if row is None else SourceState(**dict(row))


async def read_catalog_version(conn: DbConnection, source: str = DEFAULT_SOURCE) -> int:
    version = await conn.fetchval(
        "SELECT catalog_version FROM ai_cost_metadata WHERE source = $1", source
    )
    return int(version or 0)


async def hold_catalog_version(conn: DbConnection, source: str = DEFAULT_SOURCE) -> int:
    """The committed catalog version, read under `CATALOG_VERSION_LOCK` taken shared until the
    transaction ends: no new version commits meanwhile (a reprice batch). The lock comes first,
    in a statement of its own: a statement that waited for it would read the version of before
    the wait."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", CATALOG_VERSION_LOCK)
    return await read_catalog_version(conn, source)


async def read_freshness(
    conn: DbConnection, source: str = DEFAULT_SOURCE
) -> tuple[int, datetime | None]:
    """The catalog version and the time of the last successful refresh."""
    row = await conn.fetchrow(
        "SELECT catalog_version, last_success_at FROM ai_cost_metadata WHERE source = $1", source
    )
    return (int(row["catalog_version"]), row["last_success_at"]) if row else (0, None)


async def ensure_source(conn: DbConnection, source: str, url: str) -> None:
    """The source's row, made when missing. Every URL is stored redacted (`urls.redact_url`):
    `GET /v1/catalog` shows it to anyone."""
    await conn.execute(
        "INSERT INTO ai_cost_metadata (source, url) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        source,
        redact_url(url),
    )


async def lock_catalog_version(conn: DbConnection, source: str) -> int:
    """The catalog version, its row locked until the transaction ends: one writer at a time.

    It takes `CATALOG_VERSION_LOCK` exclusive first (then the row): it waits for the ingests in
    flight, which hold it shared until their COMMIT, and holds back the ones that start
    meanwhile. A change therefore reads its time (`clock_timestamp()`, the `valid_from` of the
    prices it opens) after every ingest that priced with the old catalog has committed, and no
    ingest prices with the old catalog after that time. Every writer takes the advisory lock
    before the row, so two of them (a refresh and an override) cannot deadlock.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", CATALOG_VERSION_LOCK)
    version: int = await conn.fetchval(
        "SELECT catalog_version FROM ai_cost_metadata WHERE source = $1 FOR UPDATE", source
    )
    return version


async def bump_catalog_version(
    conn: DbConnection, source: str, *, changed_at: datetime | None = None
) -> int:
    """Count a change of the catalog and NOTIFY it; the new version.

    Every change goes through here (a refresh that changed prices, an override put or
    deleted), so every API replica reloads: PostgreSQL delivers the NOTIFY when the caller's
    transaction commits, and drops it when it rolls back. `changed_at` is the time of a change
    from the upstream (`last_changed_at`); an override leaves that as it is.

    It takes `CATALOG_VERSION_LOCK` exclusive, until the transaction ends (a writer that called
    `lock_catalog_version` holds it already; taking it again is harmless): the ingests that
    start meanwhile wait for this COMMIT, then see the new version.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", CATALOG_VERSION_LOCK)
    version: int = await conn.fetchval(
        """
        UPDATE ai_cost_metadata
        SET catalog_version = catalog_version + 1,
            last_changed_at = COALESCE($2, last_changed_at), updated_at = COALESCE($2, now())
        WHERE source = $1
        RETURNING catalog_version
        """,
        source,
        changed_at,
    )
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{source}:{version}")
    return version


async def replace_documents(conn: DbConnection, source: str, documents: dict[str, Any]) -> bool:
    """Store the source's documents (`sample_spec`, ...); False when they are the same."""
    stored = await conn.fetchval(
        "SELECT documents::text FROM ai_cost_metadata WHERE source = $1", source
    )
    if stored is not None and decode_json(stored) == documents:
        return False
    await conn.execute(
        "UPDATE ai_cost_metadata SET documents = $2::jsonb WHERE source = $1",
        source,
        encode_json(documents).decode(),
    )
    return True


async def record_error(
    conn: DbConnection, source: str, url: str, *, at: datetime, error: str
) -> None:
    """A refresh that failed or was rejected: the catalog stays, the error is kept."""
    await ensure_source(conn, source, url)
    await conn.execute(
        """
        UPDATE ai_cost_metadata
        SET last_checked_at = $2, last_error = $3, last_error_at = $2, updated_at = $2
        WHERE source = $1
        """,
        source,
        at,
        error,
    )


async def record_confirmed(
    conn: DbConnection,
    source: str,
    url: str,
    *,
    at: datetime,
    etag: str | None,
    last_modified: str | None,
    body_hash: str | None,
) -> None:
    """The upstream confirmed the stored catalog (a 304, or the same content): a success that
    writes no price. A validator or hash given as None keeps the stored one."""
    await conn.execute(
        """
        UPDATE ai_cost_metadata
        SET url = $2, last_checked_at = $3, last_success_at = $3,
            etag = COALESCE($4, etag), last_modified = COALESCE($5, last_modified),
            body_hash = COALESCE($6, body_hash),
            last_error = NULL, last_error_at = NULL, updated_at = $3
        WHERE source = $1
        """,
        source,
        redact_url(url),
        at,
        etag,
        last_modified,
        body_hash,
    )


async def record_applied(
    conn: DbConnection,
    source: str,
    url: str,
    *,
    at: datetime,
    succeeded: bool,
    etag: str | None,
    last_modified: str | None,
    content_hash: str,
    body_hash: str,
    model_count: int,
    alias_count: int,
) -> None:
    """A document was applied (`prices.write_catalog`); `succeeded` False keeps
    `last_success_at` as it was (a seed, whose data is of unknown age)."""
    await conn.execute(
        """
        UPDATE ai_cost_metadata
        SET url = $2, last_checked_at = $3,
            last_success_at = CASE WHEN $4 THEN $3 ELSE last_success_at END,
            etag = $5, last_modified = $6, content_hash = $7, model_count = $8,
            alias_count = $9, body_hash = $10, last_error = NULL, last_error_at = NULL,
            updated_at = $3
        WHERE source = $1
        """,
        source,
        redact_url(url),
        at,
        succeeded,
        etag,
        last_modified,
        content_hash,
        model_count,
        alias_count,
        body_hash,
    )
