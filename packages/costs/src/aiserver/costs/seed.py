"""Seed an empty catalog from the snapshot that ships in this wheel (filled in with the refresh)."""

from __future__ import annotations

from piccolo.engine.postgres import PostgresEngine

from aiserver.core_db.settings import Settings


async def seed_if_empty(settings: Settings, engine: PostgresEngine) -> None:
    """Initializer hook: load the bundled snapshot when the catalog has no models yet."""
    from aiserver.costs.refresh import seed_from_snapshot

    await seed_from_snapshot(settings, engine)
