"""What one override is the override of: the model pricing keys it by, whatever the provider was
spelled; a new model named like another provider's is a model of its own; and the database holds
one current override per model, as pricing reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import Catalog, load_catalog
from aiserver.costs.live import LiveCatalog
from aiserver.costs.money import money
from aiserver.costs.overrides import delete_override, list_overrides, put_override
from aiserver.costs.pricing import Usage
from aiserver.costs.store.overrides import Override

from ..conftest import Settings
from ..support.upstream import Upstream
from .test_store import live_catalog
from .test_store import pool as pool  # the fixture

URL = "http://unused"
SCOPE_MIGRATION = "2026-12-05T03:00:00:000000"


@pytest.fixture
async def live(settings: Settings, upstream: Upstream) -> AsyncIterator[LiveCatalog]:
    """gpt-test-000 to gpt-test-004, OpenAI's; gpt-test-003's input price is 4e-06."""
    async with live_catalog(settings, upstream, 5) as catalog:
        yield catalog


async def _put(
    pool: asyncpg.Pool, live: LiveCatalog, provider: str, model: str, price: str
) -> Override:
    prices = {"input_cost_per_token": Decimal(price)}
    return await put_override(
        pool, live, provider=provider, model=model, prices=prices, reason="", source_url=URL
    )


async def _catalog(pool: asyncpg.Pool) -> Catalog:
    async with pool.acquire() as conn:
        return await load_catalog(conn)


def _price(
    catalog: Catalog, model: str, provider: str | None = None, at: datetime | None = None
) -> tuple[str, str, int | None]:
    """The model that prices 1,000 input tokens, their total, and the override that priced them."""
    request = CostRequest(model=model, provider=provider, usage=Usage(input_tokens=1000), at=at)
    result = calculate(catalog, request)
    return result.model, money(result.total), result.override_id


async def test_an_override_of_a_model_is_replaced_whatever_the_provider_spelling(
    live: LiveCatalog, pool: asyncpg.Pool
) -> None:
    """Pricing keys an override by its model: a second override of the model, its provider
    spelled otherwise, replaces the first rather than standing beside it, and deleting it leaves
    none (not the first, pricing on)."""
    first = await _put(pool, live, "openai", "gpt-test-003", "0.0000005")
    second = await _put(pool, live, "OpenAI", "openai/GPT-TEST-003", "0.0000007")
    # kept under the entry's own provider and key, as pricing finds them
    assert (second.provider, second.model) == ("openai", "gpt-test-003")
    assert [o.id for o in await list_overrides(pool)] == [second.id]
    closed = {o.id: o for o in await list_overrides(pool, history=True)}[first.id]
    assert closed.valid_to == second.valid_from

    await delete_override(pool, live, second.id, source_url=URL)
    assert await list_overrides(pool) == []
    catalog = await _catalog(pool)
    assert _price(catalog, "gpt-test-003") == ("gpt-test-003", "0.004", None)
    assert _price(catalog, "gpt-test-003", at=second.valid_from) == (
        "gpt-test-003", "0.0007", second.id,
    )  # fmt: skip


async def test_the_process_that_changed_an_override_prices_with_it_when_it_answers(
    live: LiveCatalog, pool: asyncpg.Pool
) -> None:
    """A client that puts an override and then asks this same API for a cost gets the override:
    the change is loaded before the answer, not when the watcher wakes (some 0.4 s later with
    the full catalog; the watcher is stopped here, so only the change's own load can count)."""
    await live.stop()
    override = await _put(pool, live, "openai", "gpt-test-003", "0.0000005")
    assert _price(live.catalog, "gpt-test-003") == ("gpt-test-003", "0.0005", override.id)
    await delete_override(pool, live, override.id, source_url=URL)
    assert _price(live.catalog, "gpt-test-003") == ("gpt-test-003", "0.004", None)


async def test_a_new_model_named_like_another_providers_model_is_a_model_of_its_own(
    live: LiveCatalog, pool: asyncpg.Pool
) -> None:
    """`gpt-test-003` under a provider that does not have it is a new model of that provider, as
    the docs say; it must not reprice OpenAI's `gpt-test-003`."""
    made = await _put(pool, live, "my-vllm", "gpt-test-003", "0.000009")
    assert (made.provider, made.model) == ("my-vllm", "my-vllm/gpt-test-003")
    catalog = await _catalog(pool)
    assert _price(catalog, "gpt-test-003") == ("gpt-test-003", "0.004", None)
    assert _price(catalog, "gpt-test-003", "openai") == ("gpt-test-003", "0.004", None)
    assert _price(catalog, "my-vllm/gpt-test-003") == ("my-vllm/gpt-test-003", "0.009", made.id)
    assert _price(catalog, "gpt-test-003", "my-vllm") == ("my-vllm/gpt-test-003", "0.009", made.id)

    # the same new model, named with its provider's prefix and the provider spelled otherwise:
    # one model, so the second replaces the first
    again = await _put(pool, live, "My-VLLM", "My-VLLM/gpt-test-003", "0.000008")
    assert (again.provider, again.model) == ("my-vllm", "my-vllm/gpt-test-003")
    assert [o.id for o in await list_overrides(pool)] == [again.id]

    # a name no provider has is kept as it is, under the provider as the catalog spells them
    house = await _put(pool, live, "InHouse", "house-model", "0.000001")
    assert (house.provider, house.model) == ("inhouse", "house-model")


# The catalog as it was before the one-current index followed pricing's key: one current override
# per (provider, model), so that a model could have several, one per spelling of its provider.
_UNDO_SCOPE = (
    "DROP INDEX ai_cost_overrides_one_current",
    "CREATE UNIQUE INDEX ai_cost_overrides_one_current"
    " ON ai_cost_overrides (provider, model) WHERE valid_to IS NULL",
    "DELETE FROM migration WHERE app_name = 'costs' AND name = '2026-12-05T03:00:00:000000'",
)


async def test_the_migration_keeps_one_current_override_per_model_as_it_priced(
    settings: Settings, live: LiveCatalog, pool: asyncpg.Pool
) -> None:
    """Current overrides of one model under several provider spellings: the migration closes
    each where the next one started (by start, then id), which is how the catalog already priced
    them, and the index then refuses a second current override of a model."""
    t0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
    t1 = t0 + timedelta(days=1)
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        for statement in _UNDO_SCOPE:
            await conn.execute(statement)
        ids = await conn.fetch(
            """
            INSERT INTO ai_cost_overrides (provider, model, prices, created_at, valid_from,
                                           valid_to)
            VALUES ('openai', 'gpt-test-003', '{"input_cost_per_token": 1e-07}', $1, $1, NULL),
                   ('OpenAI', 'gpt-test-003', '{"input_cost_per_token": 2e-07}', $2, $2, NULL),
                   ('Openai', 'gpt-test-003', '{"input_cost_per_token": 3e-07}', $2, $2, NULL),
                   ('openai', 'gpt-test-003', '{"input_cost_per_token": 9e-07}', $1, $1, $2),
                   ('openai', 'gpt-test-001', '{"input_cost_per_token": 5e-07}', $1, $1, NULL)
            RETURNING id
            """,
            t0 - timedelta(days=1),
            t1,
        )
        ids = [r["id"] for r in ids]
    finally:
        await conn.close()
    times = (t0, t0 + timedelta(hours=1), t1, t1 + timedelta(hours=1), None)
    catalog = await _catalog(pool)
    before = [_price(catalog, "gpt-test-003", at=at) for at in times]
    before += [_price(catalog, "gpt-test-001", at=at) for at in times]

    assert await apply_migrations(settings.core) == [f"costs:{SCOPE_MIGRATION}"]

    rows = await pool.fetch("SELECT id, valid_from, valid_to FROM ai_cost_overrides ORDER BY id")
    assert [(r["id"], r["valid_to"]) for r in rows] == [
        (ids[0], t1),  # closed where the next one started
        (ids[1], t1),  # the same start: the lower id is the older
        (ids[2], None),
        (ids[3], t1),  # closed already: as it was
        (ids[4], None),  # another model: as it was
    ]
    catalog = await _catalog(pool)
    after = [_price(catalog, "gpt-test-003", at=at) for at in times]
    after += [_price(catalog, "gpt-test-001", at=at) for at in times]
    assert after == before
    assert [o.id for o in catalog.overrides("gpt-test-003") if o.valid_to is None] == [ids[2]]

    # one current override per model, whatever its provider; closed ones are many
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(
            "INSERT INTO ai_cost_overrides (provider, model, prices)"
            " VALUES ('azure', 'gpt-test-003', '{}')"
        )
    await pool.execute(
        "INSERT INTO ai_cost_overrides (provider, model, prices, valid_from, valid_to)"
        " VALUES ('azure', 'gpt-test-003', '{}', $1, $1), ('openai', 'gpt-test-002', '{}', $1,"
        " NULL)",
        t0,
    )
