"""Operator price overrides (admin): they win over the source and survive refreshes.

The rules and the writes are `aiserver.costs.overrides`'; a change reaches every API replica
within seconds.
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
from aiserver.core_db.database import require_pool
from aiserver.costs import overrides
from aiserver.costs.money import money
from aiserver.costs.store.overrides import Override

DB_TIMEOUT_S: Final = 5.0


def _out(override: Override) -> OverrideOut:
    return OverrideOut(
        id=override.id,
        provider=override.provider,
        model=override.model,
        prices={k: money(v) for k, v in override.prices.items()},
        reason=override.reason,
        created_at=override.created_at,
    )


def _source_url(state: State) -> str:
    settings: ApiSettings = state.settings
    return settings.costs.model_cost_source_url


class OverrideController(Controller):
    path = "/v1/overrides"
    tags = ("overrides",)
    guards = (requires_admin,)
    security = ({"bearer": []},)

    @get("/", summary="List price overrides (admin)", responses=problem_responses(401, 403, 503))
    async def list_overrides(self) -> list[OverrideOut]:
        async with asyncio.timeout(DB_TIMEOUT_S):
            return [_out(o) for o in await overrides.list_overrides(require_pool())]

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
        async with asyncio.timeout(DB_TIMEOUT_S):
            override = await overrides.put_override(
                require_pool(),
                state.live,
                provider=data.provider,
                model=data.model,
                prices={name: Decimal(value) for name, value in data.prices.items()},
                reason=data.reason,
                source_url=_source_url(state),
            )
        return _out(override)

    @delete(
        "/{override_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete (admin)",
        responses=problem_responses(400, 401, 403, 404, 503),
    )
    async def delete_override(self, state: State, override_id: FromPath[int]) -> None:
        async with asyncio.timeout(DB_TIMEOUT_S):
            await overrides.delete_override(
                require_pool(), state.live, override_id, source_url=_source_url(state)
            )
