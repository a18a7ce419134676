"""Operator price overrides: they win over the source for their model and survive refreshes.

    overrides = await list_overrides(pool)          # the current ones; history=True: all
    override = await put_override(pool, live, provider="openai", model="gpt-4o",
                                  prices={"input_cost_per_token": Decimal("0.0000025")},
                                  reason="negotiated", source_url=url)
    await delete_override(pool, live, override.id, source_url=url)

An override applies from when it was set (`valid_from`) until it is replaced or deleted
(`valid_to`), never to the calls before it: a call is priced with the override valid at its
time (`catalog.Catalog.version_at`), so past calls keep the prices of their time. Replacing an
override closes it and opens a new one (a new id); deleting closes it. Nothing is erased.

A change and the catalog version bump it causes are one transaction, whose commit NOTIFYs every
API replica (`store.metadata.bump_catalog_version`); this process's own watcher is woken at once.
The transaction takes the catalog version's row lock first, so writers of overrides (and a
refresh) wait for each other: two PUTs of one model at once give two rows, the first closed
where the second starts, and one current.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING

from aiserver.core_db.connections import MAX_BIGINT
from aiserver.costs.errors import UnknownModel, UnknownOverride, UnknownPriceFields
from aiserver.costs.pricing import is_understood_field
from aiserver.costs.pricing.fields import STRUCTURED_FIELDS
from aiserver.costs.source import DEFAULT_SOURCE
from aiserver.costs.store import overrides as store
from aiserver.costs.store.metadata import (
    bump_catalog_version,
    ensure_source,
    lock_catalog_version,
)
from aiserver.costs.store.overrides import Override

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection
    from aiserver.costs.live import LiveCatalog


async def list_overrides(pool: asyncpg.Pool, *, history: bool = False) -> list[Override]:
    """The current overrides, by id; with `history`, the closed ones too."""
    async with pool.acquire() as conn:
        return await store.read_overrides(conn, history=history)


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

    It applies from now on; the override it replaces is closed now and kept.

    Raises `UnknownPriceFields` for a field the calculator does not price or one that holds
    several prices (`tiered_pricing`, `off_peak_pricing`, `search_context_cost_per_query`), and
    `CatalogNotReady` while no catalog is loaded: every name would miss then, and the override
    would be kept under the name as given (`openai/gpt-4o`), never reaching `gpt-4o`. A name
    the catalog does not know is a new model, kept under `provider`.
    """
    unknown = sorted(name for name in prices if not is_understood_field(name))
    if unknown:
        raise UnknownPriceFields(unknown)
    # An override's value is one price; these fields hold prices by range, window or size, and
    # one price in their place would price nothing and drop the source's prices of that field.
    structured = sorted(name for name in prices if name in STRUCTURED_FIELDS)
    if structured:
        raise UnknownPriceFields(
            structured, "fields that hold several prices, which an override cannot set"
        )
    with contextlib.suppress(UnknownModel):
        model = live.require().resolve(model, provider).key
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, source_url)
        override = await store.replace_override(
            conn, provider=provider, model=model, prices=prices, reason=reason
        )
        await bump_catalog_version(conn, DEFAULT_SOURCE)
    live.notify()
    return override


async def delete_override(
    pool: asyncpg.Pool, live: LiveCatalog, override_id: int, *, source_url: str
) -> None:
    """End a current override now; it is kept, closed, for the calls of its time.

    `UnknownOverride` when there is no override with that id, or it is closed already (replaced
    or deleted): only a current override can be deleted.
    """
    if not 0 < override_id <= MAX_BIGINT:
        raise UnknownOverride(f"no override {override_id}")
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, source_url)
        if await store.close_override(conn, override_id) is None:
            closed = await store.read_override(conn, override_id)
            if closed is None or closed.valid_to is None:
                raise UnknownOverride(f"no override {override_id}")
            raise UnknownOverride(
                f"override {override_id} is no longer current: it was closed at "
                f"{closed.valid_to.isoformat()}"
            )
        await bump_catalog_version(conn, DEFAULT_SOURCE)
    live.notify()


async def _lock(conn: DbConnection, source_url: str) -> None:
    """Take the catalog version's row lock: one writer at a time, until the transaction ends."""
    await ensure_source(conn, DEFAULT_SOURCE, source_url)
    await lock_catalog_version(conn, DEFAULT_SOURCE)
