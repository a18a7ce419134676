"""The catalog's tables have one owner (`aiserver.costs.store`), and overrides one service."""

from __future__ import annotations

import ast
import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from piccolo.constraints import Unique
from piccolo.table import Table

from aiserver.costs.errors import CatalogNotReady, UnknownOverride, UnknownPriceFields
from aiserver.costs.live import LiveCatalog
from aiserver.costs.overrides import delete_override, list_overrides, put_override
from aiserver.costs.refresh import Outcome, refresh_catalog
from aiserver.costs.store.metadata import NOTIFY_CHANNEL

from ..conftest import Settings, replace_settings
from ..support.catalog import document, models
from ..support.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]
COSTS = ROOT / "packages/costs/src/aiserver/costs"
SQL = re.compile(r"\b(SELECT|INSERT\s+INTO|UPDATE\s+\w+(\s+AS\s+\w+)?\s+SET|DELETE\s+FROM)\b", re.I)
CATALOG_TABLE = re.compile(r"\bai_(cost|model)_\w+")


def _code_strings(path: Path) -> Iterator[tuple[int, str]]:
    """The string literals of a module that are not docstrings, with their lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node.lineno, node.value


def test_only_the_store_writes_sql_on_the_catalog_tables() -> None:
    outside = [
        path
        for path in sorted(COSTS.rglob("*.py"))
        if not path.is_relative_to(COSTS / "store")
        and not path.is_relative_to(COSTS / "piccolo_migrations")
    ]
    outside += sorted((ROOT / "packages/api/src").rglob("*.py"))
    outside += sorted((ROOT / "packages/taskrunner/src").rglob("*.py"))
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text.split()[:6]}"
        for path in outside
        for line, text in _code_strings(path)
        if SQL.search(text) and CATALOG_TABLE.search(text)
    ]
    assert found == []
    # and the store does hold them: the check would see them where they are
    inside = [
        text
        for path in (COSTS / "store").rglob("*.py")
        for _, text in _code_strings(path)
        if SQL.search(text) and CATALOG_TABLE.search(text)
    ]
    assert len(inside) > 20


# -- the override service ----------------------------------------------------------------------


@pytest.fixture
async def live(settings: Settings, upstream: Upstream) -> AsyncIterator[LiveCatalog]:
    cfg = replace_settings(settings, model_cost_source_url=upstream.url, model_cost_fetch_retries=0)
    upstream.serve(document(models(3)))
    report = await refresh_catalog(cfg.core, cfg.costs, trigger="test")
    assert report.outcome is Outcome.APPLIED
    catalog = LiveCatalog(cfg.core, cfg.costs, poll_interval=60)
    await catalog.start()
    try:
        yield catalog
    finally:
        await catalog.stop()


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(settings.core.database_url, min_size=1, max_size=2) as pool:
        yield pool


async def _version(pool: asyncpg.Pool) -> int:
    version: int = await pool.fetchval("SELECT catalog_version FROM ai_cost_metadata")
    return version


async def test_an_override_is_kept_under_the_resolved_name_and_notified_once(
    settings: Settings, live: LiveCatalog, pool: asyncpg.Pool
) -> None:
    heard: list[str] = []
    listener = await asyncpg.connect(settings.core.database_url)
    await listener.add_listener(NOTIFY_CHANNEL, lambda *args: heard.append(args[-1]))
    try:
        before = await _version(pool)
        override = await put_override(
            pool, live, provider="openai", model="OpenAI/GPT-TEST-001",
            prices={"input_cost_per_token": Decimal("0.0000005")}, reason="negotiated",
            source_url="http://unused",
        )  # fmt: skip
        assert (override.model, override.provider, override.reason) == (
            "gpt-test-001",
            "openai",
            "negotiated",
        )
        assert await _version(pool) == before + 1
        # the same (provider, model) replaces the override: the unique key the upsert relies on
        again = await put_override(
            pool, live, provider="openai", model="gpt-test-001",
            prices={"input_cost_per_token": Decimal("0.0000006")}, reason="",
            source_url="http://unused",
        )  # fmt: skip
        assert again.id == override.id
        assert [(o.id, o.prices) for o in await list_overrides(pool)] == [
            (override.id, {"input_cost_per_token": Decimal("6E-7")})
        ]
        for _ in range(100):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.02)
        assert heard == [f"litellm:{before + 1}", f"litellm:{before + 2}"]

        await delete_override(pool, live, override.id, source_url="http://unused")
        assert await list_overrides(pool) == []
        assert await _version(pool) == before + 3
    finally:
        await listener.close()


async def test_a_refused_override_changes_nothing(live: LiveCatalog, pool: asyncpg.Pool) -> None:
    before = await _version(pool)
    with pytest.raises(UnknownPriceFields) as refused:
        await put_override(
            pool, live, provider="openai", model="gpt-test-000",
            prices={"input_cost_per_token": Decimal(1), "fedramp_uplift_multiplier": Decimal(2)},
            reason="", source_url="http://unused",
        )  # fmt: skip
    assert refused.value.fields == ["fedramp_uplift_multiplier"]
    with pytest.raises(UnknownOverride):
        await delete_override(pool, live, 12345, source_url="http://unused")
    with pytest.raises(UnknownOverride):
        await delete_override(pool, live, 2**63, source_url="http://unused")
    # a price the database refuses (negative) rolls the version bump back with it
    with pytest.raises(asyncpg.CheckViolationError):
        await put_override(
            pool, live, provider="openai", model="gpt-test-000",
            prices={"input_cost_per_token": Decimal(-1)}, reason="", source_url="http://unused",
        )  # fmt: skip
    assert await list_overrides(pool) == []
    assert await _version(pool) == before


async def test_an_override_waits_for_a_catalog(settings: Settings, pool: asyncpg.Pool) -> None:
    live = LiveCatalog(settings.core, settings.costs)  # never started: nothing loaded
    with pytest.raises(CatalogNotReady):
        await put_override(
            pool, live, provider="openai", model="openai/gpt-4o",
            prices={"input_cost_per_token": Decimal(1)}, reason="", source_url="http://unused",
        )  # fmt: skip
    assert await list_overrides(pool) == []


# -- the Piccolo table classes -----------------------------------------------------------------

#: Tables without a class: ai_model_aliases's primary key is (source, alias), and a Piccolo
#: table's primary key is one column (without one, Piccolo adds an `id` the table lacks).
NO_TABLE_CLASS = {"ai_model_aliases"}

#: What PostgreSQL calls the type of each Piccolo column type the table classes use.
PG_TYPES = {
    "TEXT": "text",
    "INTEGER": "integer",
    "BIGINT": "bigint",
    "BIGSERIAL": "bigint",
    "NUMERIC": "numeric",
    "TIMESTAMPTZ": "timestamp with time zone",
    "JSONB": "jsonb",
}


def _declared(table: type[Table]) -> tuple[dict[str, tuple[str, bool]], set[tuple[str, ...]]]:
    """A table class's columns (type, nullable) and its primary and unique keys."""
    columns = {
        c._meta.db_column_name: (PG_TYPES[c.column_type], c._meta.null) for c in table._meta.columns
    }
    keys = {
        (c._meta.db_column_name,)
        for c in table._meta.columns
        if c._meta.primary_key or c._meta.unique
    }
    keys |= {tuple(c.get_column_names()) for c in table._meta.constraints if isinstance(c, Unique)}
    return columns, keys


async def _migrated(
    conn: asyncpg.Connection, table: str
) -> tuple[dict[str, tuple[str, bool]], set[tuple[str, ...]]]:
    rows = await conn.fetch(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = $1",
        table,
    )
    columns = {r["column_name"]: (r["data_type"], r["is_nullable"] == "YES") for r in rows}
    keys = await conn.fetch(
        """
        SELECT array_agg(a.attname ORDER BY k.ord) AS columns
        FROM pg_constraint AS c
        CROSS JOIN unnest(c.conkey) WITH ORDINALITY AS k (attnum, ord)
        JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
        WHERE c.conrelid = $1::regclass AND c.contype IN ('p', 'u')
        GROUP BY c.oid
        """,
        table,
    )
    return columns, {tuple(r["columns"]) for r in keys}


async def test_the_table_classes_are_the_migrated_schema(migrated_database_url: str) -> None:
    """Columns, types, nullability, primary and unique keys; what Piccolo cannot state (CHECKs,
    partial unique indexes, foreign keys) is the migrations' alone."""
    from aiserver.costs.piccolo_app import APP_CONFIG

    conn = await asyncpg.connect(migrated_database_url)
    try:
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                " AND (table_name LIKE 'ai\\_cost\\_%' OR table_name LIKE 'ai\\_model\\_%')"
            )
        }
        classes = {t._meta.tablename: t for t in APP_CONFIG.table_classes}
        assert set(classes) == tables - NO_TABLE_CLASS
        for name, table in classes.items():
            assert _declared(table) == await _migrated(conn, name), name
    finally:
        await conn.close()
