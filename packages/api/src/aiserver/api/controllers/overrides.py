"""Operator price overrides (admin): they win over the source and survive refreshes.

An override applies from when it was set until it is replaced or deleted; both keep it, closed,
so calls of the past keep the prices of their time. The rules and the writes are
`aiserver.costs.overrides`'; a change reaches every API replica within seconds.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Annotated, Final

from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from aiserver.api.auth import requires_admin
from aiserver.api.problems import problem_responses, strict_body
from aiserver.api.query import NO_QUERY, only_query
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
        valid_from=override.valid_from,
        valid_to=override.valid_to,
    )


def _source_url(state: State) -> str:
    settings: ApiSettings = state.settings
    return settings.costs.model_cost_source_url


class OverrideController(Controller):
    path = "/v1/overrides"
    tags = ("overrides",)
    guards = (requires_admin,)
    security = ({"bearer": []},)

    @get(
        "/",
        summary="List price overrides (admin)",
        responses=problem_responses(400, 401, 403, 422, 503),
        guards=[only_query("history")],
    )
    async def list_overrides(
        self,
        history: Annotated[
            bool, QueryParameter(description="list the closed overrides too (replaced, deleted)")
        ] = False,
    ) -> list[OverrideOut]:
        """The current overrides by id; with `history=true`, the closed ones too."""
        async with asyncio.timeout(DB_TIMEOUT_S):
            found = await overrides.list_overrides(require_pool(), history=history)
        return [_out(o) for o in found]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create or replace an override (admin)",
        responses=problem_responses(400, 401, 403, 413, 422, 503),
        guards=[NO_QUERY],
        request_class=strict_body(OverrideIn),
    )
    async def put_override(self, state: State, data: JSONBody[OverrideIn]) -> OverrideOut:
        """Prices are decimal strings keyed by LiteLLM price field (e.g. input_cost_per_token);
        each is the price charged, over the entry's tiered_pricing ranges, off-peak prices and
        max_results tiers. An existing model is named by any name the calculator accepts, and
        the override is kept under its key and provider; a new one is created under `provider`
        (as `provider/model` when `model` names another provider's model). The override applies
        from now on, or from `valid_from` (back-dated: no earlier than the end of the model's
        override history; the calls already recorded are priced with it by a reprice); the
        model's one it replaces, whatever provider that was given with, is closed then (and
        listed with `history=true`); the new one has a new id."""
        async with asyncio.timeout(DB_TIMEOUT_S):
            override = await overrides.put_override(
                require_pool(),
                state.live,
                provider=data.provider,
                model=data.model,
                prices={name: Decimal(value) for name, value in data.prices.items()},
                reason=data.reason,
                source_url=_source_url(state),
                valid_from=data.valid_from,
            )
        return _out(override)

    @delete(
        "/{override_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete (admin)",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
        guards=[NO_QUERY],
    )
    async def delete_override(self, state: State, override_id: FromPath[int]) -> None:
        """End a current override now: calls from now on are priced without it, calls before
        keep it. It stays listed with `history=true`. A closed override is a 404."""
        async with asyncio.timeout(DB_TIMEOUT_S):
            await overrides.delete_override(
                require_pool(), state.live, override_id, source_url=_source_url(state)
            )
