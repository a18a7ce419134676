"""Seed an empty catalog from the snapshot that ships in this wheel (an `aiserver.initializers`
entry point: `initialize_database` runs it at start-up, after the migrations)."""

from __future__ import annotations

from piccolo.engine.postgres import PostgresEngine

from aiserver.core_db.settings import CoreSettings


async def seed_if_empty(core: CoreSettings, engine: PostgresEngine) -> None:
    """Initializer hook: load the bundled snapshot when the catalog has no models yet."""
    from aiserver.costs.refresh import seed_from_snapshot

    await seed_from_snapshot(core)
