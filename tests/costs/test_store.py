"""The catalog's tables have one owner (`aiserver.costs.store`), and overrides one service."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from piccolo.constraints import Unique
from piccolo.table import Table

from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import Catalog, load_catalog
from aiserver.costs.errors import (
    CatalogNotReady,
    UnknownModel,
    UnknownOverride,
    UnknownPriceFields,
)
from aiserver.costs.live import LiveCatalog
from aiserver.costs.money import money
from aiserver.costs.overrides import delete_override, list_overrides, put_override
from aiserver.costs.pricing import Usage
from aiserver.costs.refresh import Outcome, refresh_catalog
from aiserver.costs.store.metadata import NOTIFY_CHANNEL
from aiserver.costs.store.overrides import Override

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


@contextlib.asynccontextmanager
async def live_catalog(
    settings: Settings, upstream: Upstream, count: int
) -> AsyncIterator[LiveCatalog]:
    """A started live catalog of gpt-test-000 to gpt-test-<count - 1>, refreshed from
    `upstream` into the test's database."""
    cfg = replace_settings(settings, model_cost_source_url=upstream.url, model_cost_fetch_retries=0)
    upstream.serve(document(models(count)))
    report = await refresh_catalog(cfg.core, cfg.costs, trigger="test")
    assert report.outcome is Outcome.APPLIED
    catalog = LiveCatalog(cfg.core, cfg.costs, poll_interval=60)
    await catalog.start()
    try:
        yield catalog
    finally:
        await catalog.stop()


@pytest.fixture
async def live(settings: Settings, upstream: Upstream) -> AsyncIterator[LiveCatalog]:
    async with live_catalog(settings, upstream, 3) as catalog:
        yield catalog


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
        # the same (provider, model) replaces the override: a new one, the old one closed
        again = await put_override(
            pool, live, provider="openai", model="gpt-test-001",
            prices={"input_cost_per_token": Decimal("0.0000006")}, reason="",
            source_url="http://unused",
        )  # fmt: skip
        assert again.id == override.id + 1
        assert [(o.id, o.prices) for o in await list_overrides(pool)] == [
            (again.id, {"input_cost_per_token": Decimal("6E-7")})
        ]
        for _ in range(100):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.02)
        assert heard == [f"litellm:{before + 1}", f"litellm:{before + 2}"]

        await delete_override(pool, live, again.id, source_url="http://unused")
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


# -- the override history ----------------------------------------------------------------------

URL = "http://unused"


async def _catalog(pool: asyncpg.Pool) -> Catalog:
    async with pool.acquire() as conn:
        return await load_catalog(conn)


def _price(catalog: Catalog, model: str, at: datetime | None) -> tuple[str, int | None]:
    """The total of 1,000 input tokens (gpt-test-001's source price: 2e-06 each), and the
    override that priced them."""
    result = calculate(catalog, CostRequest(model=model, usage=Usage(input_tokens=1000), at=at))
    return money(result.total), result.override_id


async def _put(
    pool: asyncpg.Pool, live: LiveCatalog, model: str, price: str, reason: str = "",
    provider: str = "openai",
) -> Override:  # fmt: skip
    prices = {"input_cost_per_token": Decimal(price)}
    return await put_override(
        pool, live, provider=provider, model=model, prices=prices, reason=reason, source_url=URL
    )


async def test_replacing_and_deleting_keep_the_history_and_past_calls_their_prices(
    live: LiveCatalog, pool: asyncpg.Pool
) -> None:
    model = "gpt-test-001"
    first = await _put(pool, live, model, "0.0000005", "first deal")
    second = await _put(pool, live, model, "0.0000007", "second deal")
    await delete_override(pool, live, second.id, source_url=URL)

    history = await list_overrides(pool, history=True)
    assert [(o.id, o.provider, o.model, o.prices, o.reason) for o in history] == [
        (first.id, "openai", model, {"input_cost_per_token": Decimal("5E-7")}, "first deal"),
        (second.id, "openai", model, {"input_cost_per_token": Decimal("7E-7")}, "second deal"),
    ]
    old, last = history
    assert (old.valid_from, old.created_at, first.valid_to) == (first.valid_from,) * 2 + (None,)
    assert old.valid_to == second.valid_from == second.created_at  # replaced: one instant
    assert last.valid_to is not None
    assert last.valid_to >= last.valid_from
    assert await list_overrides(pool) == []
    for closed in history:  # only a current override can be deleted
        with pytest.raises(UnknownOverride) as refused:
            await delete_override(pool, live, closed.id, source_url=URL)
        assert str(refused.value) == (
            f"override {closed.id} is no longer current: it was closed at "
            f"{closed.valid_to.isoformat() if closed.valid_to else '?'}"
        )

    catalog = await _catalog(pool)
    just_before = first.valid_from - timedelta(microseconds=1)
    assert _price(catalog, model, just_before) == ("0.002", None)
    assert _price(catalog, model, first.valid_from) == ("0.0005", first.id)
    assert _price(catalog, model, second.valid_from - timedelta(microseconds=1)) == (
        "0.0005", first.id,
    )  # fmt: skip
    assert _price(catalog, model, second.valid_from) == ("0.0007", second.id)
    assert _price(catalog, model, last.valid_to) == ("0.002", None)
    assert _price(catalog, model, None) == ("0.002", None)


async def test_an_override_of_a_new_model_is_the_model_while_it_is_valid(
    live: LiveCatalog, pool: asyncpg.Pool
) -> None:
    made = await _put(pool, live, "house-model", "0.000003", provider="inhouse")
    assert (made.provider, made.model) == ("inhouse", "house-model")
    catalog = await _catalog(pool)
    assert _price(catalog, "inhouse/house-model", None) == ("0.003", made.id)
    before = made.valid_from - timedelta(seconds=1)
    with pytest.raises(UnknownModel) as unknown:
        _price(catalog, "house-model", before)
    assert str(unknown.value) == (
        f"model 'house-model' was not in the catalog at {before.isoformat()} "
        f"(added by an override from {made.valid_from.isoformat()})"
    )

    await delete_override(pool, live, made.id, source_url=URL)
    (closed,) = await list_overrides(pool, history=True)
    assert closed.valid_to is not None
    catalog = await _catalog(pool)
    assert "house-model" not in catalog.current
    with pytest.raises(UnknownModel) as gone:
        _price(catalog, "house-model", None)
    assert f"(removed {closed.valid_to.isoformat()})" in str(gone.value)
    assert _price(catalog, "house-model", made.valid_from) == ("0.003", made.id)
    with pytest.raises(UnknownModel):
        _price(catalog, "house-model", closed.valid_to)


async def _waiting_for_a_lock(conn: asyncpg.Connection, count: int) -> None:
    for _ in range(500):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} sessions waited for the lock")


@pytest.mark.parametrize("existing", [False, True], ids=["create", "replace"])
async def test_concurrent_puts_of_one_model_leave_one_current_override(
    settings: Settings, live: LiveCatalog, existing: bool
) -> None:
    """Two PUTs of one model at once, held at the start until both are in flight: both succeed,
    one after the other; the first is closed where the second starts, and one is current."""
    model = "gpt-test-002"
    async with asyncpg.create_pool(settings.core.database_url, min_size=3, max_size=3) as pool:
        if existing:
            await _put(pool, live, model, "0.000009", "old")
        version = await _version(pool)
        blocker = await asyncpg.connect(settings.core.database_url)
        try:
            async with blocker.transaction():
                await blocker.execute("SELECT 1 FROM ai_cost_metadata FOR UPDATE")
                puts = [
                    asyncio.create_task(_put(pool, live, model, f"0.00000{i}", f"writer {i}"))
                    for i in (1, 2)
                ]
                await _waiting_for_a_lock(blocker, 2)
            made = await asyncio.gather(*puts)
        finally:
            await blocker.close()
        history = [o for o in await list_overrides(pool, history=True) if o.model == model]
        current = await list_overrides(pool)
        assert await _version(pool) == version + 2

    assert len(history) == 2 + existing
    assert sorted(o.id for o in made) == [o.id for o in history[-2:]]
    assert [o.id for o in current] == [history[-1].id]
    for earlier, later in itertools.pairwise(history):
        assert earlier.valid_to == later.valid_from
    assert history[-1].valid_to is None
    assert {o.reason for o in history[-2:]} == {"writer 1", "writer 2"}


async def test_concurrent_puts_without_a_hold_never_fail(
    live: LiveCatalog, settings: Settings
) -> None:
    async with asyncpg.create_pool(settings.core.database_url, min_size=4, max_size=4) as pool:
        for round_ in range(5):
            writers = (_put(pool, live, "gpt-test-000", f"0.0000{round_}{i}") for i in range(4))
            await asyncio.gather(*writers)
        history = await list_overrides(pool, history=True)
    assert len(history) == 20
    assert [o.valid_to is None for o in history] == [False] * 19 + [True]
    assert all(a.valid_to == b.valid_from for a, b in itertools.pairwise(history))


_UNDO_HISTORY = (
    "DROP INDEX ai_cost_overrides_one_current",
    "ALTER TABLE ai_cost_overrides DROP CONSTRAINT ai_cost_overrides_valid_span,"
    " DROP COLUMN valid_from, DROP COLUMN valid_to,"
    " ADD CONSTRAINT ai_cost_overrides_provider_model_key UNIQUE (provider, model)",
    "DELETE FROM migration WHERE app_name = 'costs' AND name = '2026-12-03T09:00:00:000000'",
)


async def test_the_history_migration_starts_each_override_at_its_created_at(
    settings: Settings,
) -> None:
    """The table as it was before the migration (undone here), with two overrides: each becomes
    current from its `created_at`, the best evidence of when its prices were set."""
    set_at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        for statement in _UNDO_HISTORY:
            await conn.execute(statement)
        await conn.execute(
            "INSERT INTO ai_cost_overrides (provider, model, prices, reason, created_at)"
            " VALUES ('openai', 'gpt-test-000', '{\"input_cost_per_token\": 1e-07}', 'a', $1),"
            " ('inhouse', 'house-model', '{\"input_cost_per_token\": 0.5}', '', $2)",
            set_at,
            set_at + timedelta(days=1),
        )
    finally:
        await conn.close()
    assert await apply_migrations(settings.core) == ["costs:2026-12-03T09:00:00:000000"]
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        rows = await conn.fetch(
            "SELECT model, created_at, valid_from, valid_to FROM ai_cost_overrides ORDER BY id"
        )
        assert [tuple(r) for r in rows] == [
            ("gpt-test-000", set_at, set_at, None),
            ("house-model", set_at + timedelta(days=1), set_at + timedelta(days=1), None),
        ]
        # one current override per (provider, model); closed ones are many
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO ai_cost_overrides (provider, model, prices)"
                " VALUES ('openai', 'gpt-test-000', '{}')"
            )
        await conn.execute(
            "INSERT INTO ai_cost_overrides (provider, model, prices, valid_from, valid_to)"
            " VALUES ('openai', 'gpt-test-000', '{}', $1, $1), ('openai', 'gpt-test-000', '{}',"
            " $1, $1)",
            set_at,
        )
        with pytest.raises(asyncpg.CheckViolationError):  # a span that ends before it starts
            await conn.execute(
                "INSERT INTO ai_cost_overrides (provider, model, prices, valid_from, valid_to)"
                " VALUES ('openai', 'x', '{}', $1, $2)",
                set_at,
                set_at - timedelta(seconds=1),
            )
    finally:
        await conn.close()


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
