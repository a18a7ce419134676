"""`ai_model_costs` and the aliases: the versioned prices, written set-based, in one go.

The aliases are `ai_model_aliases` (the current ones) and `ai_model_alias_history` (each alias
over the span of time it named one target, current ones included), written together.

`write_catalog` runs inside the caller's transaction: it copies the parsed source into a temporary
table (COPY), then closes removed and changed versions and opens new ones with `UPDATE ... FROM`
and `INSERT ... SELECT`, so an unchanged model costs no write at all and a crash leaves either the
old catalog or the new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from aiserver.costs.source import DEFAULT_SOURCE, ParsedSource, decode_json, token_limit
from aiserver.costs.store.metadata import (
    bump_catalog_version,
    ensure_source,
    lock_catalog_version,
    replace_documents,
)

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection

#: Typed price columns of ai_model_costs, filled from the entry field of the same name.
TYPED_PRICE_COLUMNS: Final[tuple[str, ...]] = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
    "input_cost_per_audio_token",
    "output_cost_per_audio_token",
    "input_cost_per_image",
    "output_cost_per_image",
    "input_cost_per_request",
)


# -- reading ---------------------------------------------------------------------------------


async def current_model_count(conn: DbConnection, source: str = DEFAULT_SOURCE) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM ai_model_costs WHERE source = $1 AND valid_to IS NULL", source
    )
    return count


async def count_current_among(conn: DbConnection, source: str, models: list[str]) -> int:
    """How many of `models` have a current version."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM ai_model_costs WHERE source = $1 AND valid_to IS NULL"
        " AND model = ANY($2::text[])",
        source,
        models,
    )
    return count


async def read_versions(conn: DbConnection, source: str = DEFAULT_SOURCE) -> list[asyncpg.Record]:
    """Every price version, current and past, with the entry as JSON text (for
    `catalog.Catalog.build`, which decodes it exactly)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT id, source, provider, model, mode, valid_from, valid_to, entry::text AS entry
        FROM ai_model_costs WHERE source = $1
        """,
        source,
    )
    return rows


async def read_aliases(conn: DbConnection, source: str = DEFAULT_SOURCE) -> dict[str, str]:
    rows = await conn.fetch("SELECT alias, target FROM ai_model_aliases WHERE source = $1", source)
    return {r["alias"]: r["target"] for r in rows}


@dataclass(frozen=True, slots=True)
class AliasSpan:
    """An alias naming `target` from `valid_from` until `valid_to` (None: current)."""

    alias: str
    target: str
    valid_from: datetime
    valid_to: datetime | None = None


async def read_alias_history(conn: DbConnection, source: str = DEFAULT_SOURCE) -> list[AliasSpan]:
    """Every span of every alias, current and closed, oldest first."""
    rows = await conn.fetch(
        "SELECT alias, target, valid_from, valid_to FROM ai_model_alias_history"
        " WHERE source = $1 ORDER BY valid_from, id",
        source,
    )
    return [AliasSpan(**dict(r)) for r in rows]


async def read_current_entries(
    conn: DbConnection, source: str = DEFAULT_SOURCE
) -> list[dict[str, Any]]:
    """The entry of every current model, decoded exactly."""
    rows = await conn.fetch(
        "SELECT entry::text AS entry FROM ai_model_costs WHERE source = $1 AND valid_to IS NULL",
        source,
    )
    return [decode_json(row["entry"]) for row in rows]


@dataclass(frozen=True, slots=True)
class CurrentModel:
    """A model's current version, as `aiserver-costs show` prints it."""

    model: str
    provider: str
    mode: str | None
    entry: dict[str, Any]
    valid_from: datetime
    opened_in_version: int
    versions: int  # how many versions of the model are kept, this one included


async def read_current_model(
    conn: DbConnection, name: str, source: str = DEFAULT_SOURCE
) -> CurrentModel | None:
    """The current version of the model keyed `name`, or else of one keyed so but for case."""
    row = await conn.fetchrow(
        """
        SELECT model, provider, mode, entry::text AS entry, valid_from, opened_in_version,
               (SELECT count(*) FROM ai_model_costs h
                WHERE h.source = c.source AND h.model = c.model) AS versions
        FROM ai_model_costs c
        WHERE source = $1 AND valid_to IS NULL AND lower(model) = lower($2)
        ORDER BY model = $2 DESC LIMIT 1
        """,
        source,
        name,
    )
    if row is None:
        return None
    return CurrentModel(**{**dict(row), "entry": decode_json(row["entry"])})


# -- writing ---------------------------------------------------------------------------------


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
) -> WriteResult:
    """Make the current versions of `source` equal to `parsed`. Call inside a transaction.

    The prices it opens are valid from the time it holds the catalog version's lock, not from
    when the refresh began (before its download): an ingest that priced a call of that time with
    the old prices has committed by then, and one that prices it later sees the new ones. Until
    this transaction commits, ingests wait (for the write, well under a second).
    """
    await ensure_source(conn, source, url)
    version = await lock_catalog_version(conn, source)
    changed_at: datetime = await conn.fetchval("SELECT clock_timestamp()")
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
    # The index makes the anti-join below an index lookup per current model: without it, a
    # refresh while ai_model_costs has no statistics yet (the first after a seed) may be planned
    # as a nested loop over the temporary table, seconds for a few thousand models. ANALYZE
    # skips the large entry column.
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
        changed_at,
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
        changed_at,
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
        changed_at,
        new_version,
    )
    changed_models = {r["model"] for r in changed}
    added = tuple(sorted(r["model"] for r in opened if r["model"] not in changed_models))

    aliases_changed = await _replace_aliases(conn, source, parsed, changed_at)
    documents_changed = await replace_documents(conn, source, dict(parsed.documents))
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
        bumped = await bump_catalog_version(conn, source, changed_at=changed_at)
        assert bumped == new_version, "the version row is locked by this transaction"
        result = replace(result, catalog_version=new_version)
    return result


def _kept_aliases(parsed: ParsedSource, current: Mapping[str, str]) -> dict[str, str]:
    """The aliases of `parsed`, and each skipped one that names the same model as before: a
    skipped alias keeps its target, as a skipped model keeps its prices, while that model is in
    the catalog (in `parsed`, or skipped too and so kept)."""
    aliases = dict(parsed.aliases)
    for alias, target in current.items():
        if alias in parsed.skipped and (target in parsed.models or target in parsed.skipped):
            aliases.setdefault(alias, target)
    return aliases


async def _replace_aliases(
    conn: DbConnection, source: str, parsed: ParsedSource, changed_at: datetime
) -> bool:
    """Make the current aliases those of `parsed` (`_kept_aliases`); in the history, close the
    spans of those re-pointed or dropped and open the new ones at `changed_at`. The history is
    compared with itself, so that it catches up also after a write that left it behind (an
    earlier release's refresh)."""
    stored = await read_aliases(conn, source)
    aliases = _kept_aliases(parsed, stored)
    current = await conn.fetch(
        "SELECT alias, target FROM ai_model_alias_history WHERE source = $1 AND valid_to IS NULL",
        source,
    )
    spans = {r["alias"]: r["target"] for r in current}
    ended = [alias for alias, target in spans.items() if aliases.get(alias) != target]
    opened = {alias: target for alias, target in aliases.items() if spans.get(alias) != target}
    if ended:
        await conn.execute(
            "UPDATE ai_model_alias_history SET valid_to = $2"
            " WHERE source = $1 AND valid_to IS NULL AND alias = ANY($3::text[])",
            source,
            changed_at,
            ended,
        )
    if opened:
        await conn.execute(
            """
            INSERT INTO ai_model_alias_history (source, alias, target, valid_from)
            SELECT $1, a.alias, a.target, $2
            FROM unnest($3::text[], $4::text[]) AS a (alias, target)
            """,
            source,
            changed_at,
            list(opened),
            list(opened.values()),
        )
    if stored == aliases:
        return bool(ended or opened)
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
