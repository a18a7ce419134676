"""Operator price overrides: they win over the source for their model and survive refreshes.

    overrides = await list_overrides(pool)
    override = await put_override(pool, live, provider="openai", model="gpt-4o",
                                  prices={"input_cost_per_token": Decimal("0.0000025")},
                                  reason="negotiated", source_url=url)
    await delete_override(pool, live, override.id, source_url=url)

A change and the catalog version bump it causes are one transaction, whose commit NOTIFYs every
API replica (`store.metadata.bump_catalog_version`); this process's own watcher is woken at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING

from aiserver.core_db.connections import MAX_BIGINT
from aiserver.costs.errors import UnknownModel, UnknownOverride, UnknownPriceFields
from aiserver.costs.pricing import is_understood_field
from aiserver.costs.source import DEFAULT_SOURCE
from aiserver.costs.store import overrides as store
from aiserver.costs.store.metadata import bump_catalog_version, ensure_source
from aiserver.costs.store.overrides import Override

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection
    from aiserver.costs.live import LiveCatalog


async def list_overrides(pool: asyncpg.Pool) -> list[Override]:
    async with pool.acquire() as conn:
        return await store.read_overrides(conn)


async def put_override(
    pool: asyncpg.Pool,
    live: LiveCatalog,
    *,
    provider: str,
    model: str,
    prices: Mapping[str, Decimal],
    reason: str,
    source_url: str,
) -> Override:
    """Create or replace the override of a model, named by any name the calculator accepts.

    Raises `UnknownPriceFields` for a field the calculator does not price, and
    `CatalogNotReady` while no catalog is loaded: every name would miss then, and the override
    would be kept under the name as given (`openai/gpt-4o`), never reaching `gpt-4o`. A name
    the catalog does not know is a new model, kept under `provider`.
    """
    unknown = sorted(name for name in prices if not is_understood_field(name))
    if unknown:
        raise UnknownPriceFields(unknown)
    with contextlib.suppress(UnknownModel):
        model = live.require().resolve(model, provider).key
    async with pool.acquire() as conn, conn.transaction():
        override = await store.upsert_override(
            conn, provider=provider, model=model, prices=prices, reason=reason
        )
        await _bump(conn, source_url)
    live.notify()
    return override


async def delete_override(
    pool: asyncpg.Pool, live: LiveCatalog, override_id: int, *, source_url: str
) -> None:
    """Delete an override; `UnknownOverride` when there is none with that id."""
    if not 0 < override_id <= MAX_BIGINT:
        raise UnknownOverride(f"no override {override_id}")
    async with pool.acquire() as conn, conn.transaction():
        if not await store.delete_override(conn, override_id):
            raise UnknownOverride(f"no override {override_id}")
        await _bump(conn, source_url)
    live.notify()


async def _bump(conn: DbConnection, source_url: str) -> None:
    await ensure_source(conn, DEFAULT_SOURCE, source_url)
    await bump_catalog_version(conn, DEFAULT_SOURCE)
