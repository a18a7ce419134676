"""SQL of the price catalog: read its state, write a new source version set-based, in one go.

`write_catalog` runs inside the caller's transaction: it copies the parsed source into a temporary
table (COPY), then closes removed and changed versions and opens new ones with `UPDATE ... FROM`
and `INSERT ... SELECT`, so an unchanged model costs no write at all and a crash leaves either the
old catalog or the new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import msgspec

from aiserver.core_db.database import DbConnection
from aiserver.costs.source import (
    DEFAULT_SOURCE,
    ParsedSource,
    decode_json,
    encode_json,
    token_limit,
)
from aiserver.costs.tables import TYPED_PRICE_COLUMNS

NOTIFY_CHANNEL: Final = "aiserver_catalog"


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


async def current_model_count(conn: DbConnection, source: str = DEFAULT_SOURCE) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM ai_model_costs WHERE source = $1 AND valid_to IS NULL", source
    )
    return count


async def ensure_source(conn: DbConnection, source: str, url: str) -> None:
    await conn.execute(
        "INSERT INTO ai_cost_metadata (source, url) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        source,
        url,
    )


@dataclass(frozen=True, slots=True)
class WriteResult:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    aliases_changed: bool
    documents_changed: bool
    catalog_version: int
    model_count: int

    @property
    def changed_anything(self) -> bool:
        return bool(
            self.added
            or self.changed
            or self.removed
            or self.aliases_changed
            or self.documents_changed
        )


_COPY_COLUMNS: Final = (
    "provider",
    "model",
    "mode",
    "max_input_tokens",
    "max_output_tokens",
    *TYPED_PRICE_COLUMNS,
    "entry",
    "entry_hash",
)


def _typed_price(entry: Mapping[str, Any], name: str) -> Decimal | None:
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    return Decimal(value)


def _copy_records(parsed: ParsedSource) -> list[tuple[Any, ...]]:
    records = []
    for model in parsed.models.values():
        entry = model.entry
        records.append(
            (
                model.provider,
                model.key,
                model.mode,
                token_limit(entry, "max_input_tokens"),
                token_limit(entry, "max_output_tokens"),
                *(_typed_price(entry, name) for name in TYPED_PRICE_COLUMNS),
                model.encoded.decode(),
                model.entry_hash,
            )
        )
    return records


async def write_catalog(
    conn: DbConnection,
    parsed: ParsedSource,
    *,
    source: str,
    url: str,
    now: datetime,
) -> WriteResult:
    """Make the current versions of `source` equal to `parsed`. Call inside a transaction."""
    await ensure_source(conn, source, url)
    version: int = await conn.fetchval(
        "SELECT catalog_version FROM ai_cost_metadata WHERE source = $1 FOR UPDATE", source
    )
    new_version = version + 1
    await conn.execute(
        """
        CREATE TEMPORARY TABLE new_costs
            (LIKE ai_model_costs INCLUDING DEFAULTS) ON COMMIT DROP;
        ALTER TABLE new_costs
            DROP COLUMN id, DROP COLUMN source, DROP COLUMN valid_from, DROP COLUMN valid_to,
            DROP COLUMN opened_in_version, DROP COLUMN closed_in_version;
        """
    )
    await conn.copy_records_to_table(
        "new_costs", records=_copy_records(parsed), columns=list(_COPY_COLUMNS)
    )
    # The index makes the anti-join below an index lookup per current model: without it, the
    # first refresh after a seed (before ai_model_costs has statistics) planned a nested loop
    # over the temporary table, 11 s for 4,778 models. ANALYZE skips the large entry column.
    await conn.execute("CREATE UNIQUE INDEX ON new_costs (model)")
    await conn.execute("ANALYZE new_costs (model, provider, entry_hash)")
    # A skipped entry (malformed this time) keeps its previous version current.
    keep = list(parsed.skipped)
    removed = await conn.fetch(
        """
        UPDATE ai_model_costs AS c SET valid_to = $2, closed_in_version = $3
        WHERE c.source = $1 AND c.valid_to IS NULL
          AND NOT EXISTS (SELECT 1 FROM new_costs AS n WHERE n.model = c.model)
          AND NOT (c.model = ANY($4::text[]))
        RETURNING c.model
        """,
        source,
        now,
        new_version,
        keep,
    )
    changed = await conn.fetch(
        """
        UPDATE ai_model_costs AS c SET valid_to = $2, closed_in_version = $3
        FROM new_costs AS n
        WHERE c.source = $1 AND c.valid_to IS NULL AND n.model = c.model
          AND (n.entry_hash <> c.entry_hash OR n.provider <> c.provider)
        RETURNING c.model
        """,
        source,
        now,
        new_version,
    )
    columns = ", ".join(_COPY_COLUMNS)
    opened = await conn.fetch(
        f"""
        INSERT INTO ai_model_costs (source, {columns}, valid_from, opened_in_version)
        SELECT $1, {columns}, $2, $3 FROM new_costs AS n
        WHERE NOT EXISTS (
            SELECT 1 FROM ai_model_costs AS c
            WHERE c.source = $1 AND c.model = n.model AND c.valid_to IS NULL
        )
        RETURNING model
        """,  # noqa: S608
        source,
        now,
        new_version,
    )
    changed_models = {r["model"] for r in changed}
    added = tuple(sorted(r["model"] for r in opened if r["model"] not in changed_models))

    aliases_changed = await _replace_aliases(conn, source, parsed.aliases)
    documents_changed = await _replace_documents(conn, source, parsed.documents)
    result = WriteResult(
        added=added,
        changed=tuple(sorted(changed_models)),
        removed=tuple(sorted(r["model"] for r in removed)),
        aliases_changed=aliases_changed,
        documents_changed=documents_changed,
        catalog_version=version,
        model_count=await current_model_count(conn, source),
    )
    if result.changed_anything or version == 0:
        await conn.execute(
            """
            UPDATE ai_cost_metadata
            SET catalog_version = $2, last_changed_at = $3, updated_at = $3
            WHERE source = $1
            """,
            source,
            new_version,
            now,
        )
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{source}:{new_version}")
        result = _with_version(result, new_version)
    return result


def _with_version(result: WriteResult, version: int) -> WriteResult:
    return WriteResult(
        added=result.added,
        changed=result.changed,
        removed=result.removed,
        aliases_changed=result.aliases_changed,
        documents_changed=result.documents_changed,
        catalog_version=version,
        model_count=result.model_count,
    )


async def _replace_aliases(conn: DbConnection, source: str, aliases: Mapping[str, str]) -> bool:
    rows = await conn.fetch("SELECT alias, target FROM ai_model_aliases WHERE source = $1", source)
    if {r["alias"]: r["target"] for r in rows} == dict(aliases):
        return False
    await conn.execute("DELETE FROM ai_model_aliases WHERE source = $1", source)
    await conn.execute(
        """
        INSERT INTO ai_model_aliases (source, alias, target)
        SELECT $1, a.alias, a.target FROM unnest($2::text[], $3::text[]) AS a (alias, target)
        """,
        source,
        list(aliases),
        list(aliases.values()),
    )
    return True


async def _replace_documents(conn: DbConnection, source: str, documents: Mapping[str, Any]) -> bool:
    stored = await conn.fetchval(
        "SELECT documents::text FROM ai_cost_metadata WHERE source = $1", source
    )
    if stored is not None and decode_json(stored) == dict(documents):
        return False
    await conn.execute(
        "UPDATE ai_cost_metadata SET documents = $2::jsonb WHERE source = $1",
        source,
        encode_json(dict(documents)).decode(),
    )
    return True
