"""Operator price overrides (admin): they win over the source and survive refreshes.

A change bumps the catalog version and NOTIFYs, in the same transaction, so every API replica
reloads within seconds.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Final

from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from aiserver.api.auth import requires_admin
from aiserver.api.problems import problem_responses
from aiserver.api.schemas import OverrideIn, OverrideOut
from aiserver.api.settings import ApiSettings
from aiserver.core_db.database import DbConnection, require_pool
from aiserver.costs.catalog import read_overrides
from aiserver.costs.errors import UnknownModel, UnknownOverride, UnknownPriceFields
from aiserver.costs.live import LiveCatalog
from aiserver.costs.money import money
from aiserver.costs.pricing import is_understood_field
from aiserver.costs.source import DEFAULT_SOURCE, encode_json
from aiserver.costs.store import NOTIFY_CHANNEL, ensure_source

DB_TIMEOUT_S: Final = 5.0
#: Override ids are BIGSERIAL: a larger id names no override (and asyncpg refuses to send it).
MAX_ID: Final = 2**63 - 1


async def _bump_version(conn: DbConnection, state: State) -> None:
    settings: ApiSettings = state.settings
    await ensure_source(conn, DEFAULT_SOURCE, settings.costs.model_cost_source_url)
    version = await conn.fetchval(
        "UPDATE ai_cost_metadata SET catalog_version = catalog_version + 1, updated_at = now()"
        " WHERE source = $1 RETURNING catalog_version",
        DEFAULT_SOURCE,
    )
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{DEFAULT_SOURCE}:{version}")


class OverrideController(Controller):
    path = "/v1/overrides"
    tags = ("overrides",)
    guards = (requires_admin,)
    security = ({"bearer": []},)

    @get("/", summary="List price overrides (admin)", responses=problem_responses(401, 403, 503))
    async def list_overrides(self) -> list[OverrideOut]:
        async with asyncio.timeout(DB_TIMEOUT_S), require_pool().acquire() as conn:
            overrides = await read_overrides(conn)
        return [
            OverrideOut(
                id=o.id,
                provider=o.provider,
                model=o.model,
                prices={k: money(v) for k, v in o.prices.items()},
                reason=o.reason,
                created_at=o.created_at,
            )
            for o in overrides
        ]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create or replace an override (admin)",
        responses=problem_responses(400, 401, 403, 413, 422, 503),
    )
    async def put_override(self, state: State, data: JSONBody[OverrideIn]) -> OverrideOut:
        """Prices are decimal strings keyed by LiteLLM price field (e.g. input_cost_per_token).
        An existing model is named by any name the calculator accepts; a new one is created
        under `provider`."""
        unknown = sorted(name for name in data.prices if not is_understood_field(name))
        if unknown:
            raise UnknownPriceFields(unknown)
        live: LiveCatalog = state.live
        model = data.model
        try:
            # require(): with no catalog yet, every name would miss and the override would be
            # kept under the name as given (`openai/gpt-4o`), never reaching `gpt-4o`
            resolved = live.require().resolve(data.model, data.provider)
        except UnknownModel:
            resolved = None
        if resolved is not None:
            model = resolved.key
        prices = {name: Decimal(value) for name, value in data.prices.items()}
        async with (
            asyncio.timeout(DB_TIMEOUT_S),
            require_pool().acquire() as conn,
            conn.transaction(),
        ):
            row = await conn.fetchrow(
                """
                INSERT INTO ai_cost_overrides (provider, model, prices, reason)
                VALUES ($1, $2, $3::jsonb, $4)
                ON CONFLICT (provider, model)
                DO UPDATE SET prices = EXCLUDED.prices, reason = EXCLUDED.reason,
                              created_at = now()
                RETURNING id, created_at
                """,
                data.provider,
                model,
                encode_json(prices).decode(),
                data.reason,
            )
            await _bump_version(conn, state)
        assert row is not None  # INSERT ... RETURNING always returns the row
        live.notify()
        return OverrideOut(
            id=row["id"],
            provider=data.provider,
            model=model,
            prices={k: money(v) for k, v in prices.items()},
            reason=data.reason,
            created_at=row["created_at"],
        )

    @delete(
        "/{override_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete (admin)",
        responses=problem_responses(400, 401, 403, 404, 503),
    )
    async def delete_override(self, state: State, override_id: FromPath[int]) -> None:
        if not 0 < override_id <= MAX_ID:
            raise UnknownOverride(f"no override {override_id}")
        async with (
            asyncio.timeout(DB_TIMEOUT_S),
            require_pool().acquire() as conn,
            conn.transaction(),
        ):
            deleted = await conn.fetchval(
                "DELETE FROM ai_cost_overrides WHERE id = $1 RETURNING id", override_id
            )
            if deleted is None:
                raise UnknownOverride(f"no override {override_id}")
            await _bump_version(conn, state)
        state.live.notify()
