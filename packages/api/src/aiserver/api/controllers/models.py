"""The model price catalog: list and look up models."""

from __future__ import annotations

import base64
import binascii
import bisect
from typing import Annotated

from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, QueryParameter

from aiserver.api.errors import BadCursor
from aiserver.api.problems import problem_responses
from aiserver.api.query import only_query
from aiserver.api.schemas import ModelDetail, ModelPage, ModelSummary, PriceVersionOut
from aiserver.costs.catalog import Catalog, PriceVersion
from aiserver.costs.live import LiveCatalog
from aiserver.costs.money import money, plain


def _encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("the cursor is not one this API returned") from None


def price_of(pv: PriceVersion, field: str) -> str | None:
    value = pv.entry.get(field)
    return money(value) if value is not None and not isinstance(value, bool | str) else None


def _limit(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def summary(pv: PriceVersion) -> ModelSummary:
    return ModelSummary(
        model=pv.model,
        provider=pv.provider,
        mode=pv.mode,
        max_input_tokens=_limit(pv.entry.get("max_input_tokens")),
        max_output_tokens=_limit(pv.entry.get("max_output_tokens")),
        input_cost_per_token=price_of(pv, "input_cost_per_token"),
        output_cost_per_token=price_of(pv, "output_cost_per_token"),
        price_version=pv.id,
        valid_from=pv.valid_from,
        override_id=pv.override_id,
    )


def model_detail(catalog: Catalog, model: str, provider: str | None = None) -> ModelDetail:
    """A model's current prices and its versions, by any name the calculator accepts;
    `UnknownModel` for none."""
    resolved = catalog.resolve(model, provider)
    current = catalog.current.get(resolved.key)
    history = catalog.history(resolved.key)
    pv = current or history[-1]
    return ModelDetail(
        model=pv.model,
        provider=pv.provider,
        mode=pv.mode,
        matched_by=resolved.matched_by,
        price_version=pv.id,
        catalog_version=catalog.version,
        valid_from=pv.valid_from,
        override_id=pv.override_id,
        prices=plain(dict(pv.entry)),
        versions=[
            PriceVersionOut(price_version=v.id, valid_from=v.valid_from, valid_to=v.valid_to)
            for v in history
        ],
    )


class ModelController(Controller):
    path = "/v1/models"
    tags = ("models",)

    @get(
        "/",
        summary="List models",
        responses=problem_responses(400, 422, 503),
        guards=[only_query("provider", "mode", "q", "limit", "cursor")],
    )
    async def list_models(
        self,
        state: State,
        provider: FromQuery[str | None] = None,
        mode: FromQuery[str | None] = None,
        q: Annotated[str | None, QueryParameter(description="text in the model name")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
        cursor: Annotated[str | None, QueryParameter(description="the last next_cursor")] = None,
    ) -> ModelPage:
        """Current models sorted by name, filtered by provider, mode and text; cursor-paginated."""
        live: LiveCatalog = state.live
        catalog = live.require()
        found = catalog.models(provider=provider, mode=mode, text=q)
        start = 0
        if cursor:
            start = bisect.bisect_right([pv.model for pv in found], _decode_cursor(cursor))
        page = found[start : start + limit]
        more = start + limit < len(found)
        return ModelPage(
            data=[summary(pv) for pv in page],
            next_cursor=_encode_cursor(page[-1].model) if more and page else None,
            catalog_version=catalog.version,
        )

    @get(
        "/{model:path}",
        summary="One model's prices",
        responses=problem_responses(400, 404, 422, 503),
        guards=[only_query("provider")],
    )
    async def get_model(
        self, state: State, model: FromPath[str], provider: FromQuery[str | None] = None
    ) -> ModelDetail:
        """A model by any name the calculator accepts (prefix, alias, dated name, ...)."""
        live: LiveCatalog = state.live
        return model_detail(live.require(), model.lstrip("/"), provider)
