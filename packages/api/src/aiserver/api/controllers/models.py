"""The model price catalog: list and look up models.

Both show the prices a call made now is charged, as `calculate` finds them: a model's current
version with its current override laid over it, and a model the source dropped that an override
keeps, with its last source prices and that override laid over them (`priced_now`).
"""

from __future__ import annotations

import base64
import binascii
import bisect
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, QueryParameter

from aiserver.api.errors import BadCursor
from aiserver.api.problems import problem_responses
from aiserver.api.query import only_query
from aiserver.api.schemas import ModelDetail, ModelPage, ModelSummary, PriceVersionOut
from aiserver.costs.catalog import Catalog, PriceVersion
from aiserver.costs.errors import UnknownModel
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


def one_price(value: object) -> str | None:
    """A price field's value as the API writes a price; None for no price, or for a dict of
    prices per option (no one price)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        return None
    return money(value)


def price_of(pv: PriceVersion, field: str) -> str | None:
    return one_price(pv.entry.get(field))


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
        price_version=pv.id or None,  # 0: a model only an override prices
        valid_from=pv.valid_from,
        override_id=pv.override_id,
    )


def priced_now(catalog: Catalog, key: str, now: datetime) -> PriceVersion | None:
    """The version of the model keyed `key` that a call made at `now` is priced with, with the
    override valid then laid over it (`override_id`), as `calculate` finds it: the current one
    or, for a model the source dropped, its last source version under the override that keeps
    it. None when pricing refuses the model (gone, and no override keeps it)."""
    current = catalog.current.get(key)
    if current is not None or not catalog.history(key):
        return current
    try:
        return catalog.version_at(key, now)[0]
    except UnknownModel:
        return None


def model_detail(catalog: Catalog, model: str, provider: str | None = None) -> ModelDetail:
    """A model's prices as a call made now is charged, and its versions, by any name the
    calculator accepts; `UnknownModel` for none. A model that pricing refuses now (gone from
    the source, no override keeps it) shows its last prices, for its history."""
    resolved = catalog.resolve(model, provider)
    history = catalog.history(resolved.key)
    pv = priced_now(catalog, resolved.key, datetime.now(UTC)) or history[-1]
    return ModelDetail(
        model=pv.model,
        provider=pv.provider,
        mode=pv.mode,
        matched_by=resolved.matched_by,
        price_version=pv.id or None,  # 0: a model only an override prices
        catalog_version=catalog.version,
        valid_from=pv.valid_from,
        override_id=pv.override_id,
        prices=plain(dict(pv.entry)),
        versions=[
            PriceVersionOut(
                price_version=v.id or None, valid_from=v.valid_from, valid_to=v.valid_to
            )
            for v in history
        ],
    )


def priced_models(
    catalog: Catalog,
    *,
    provider: str | None = None,
    mode: str | None = None,
    text: str | None = None,
) -> list[PriceVersion]:
    """The models pricing answers for now, sorted by key and filtered as `Catalog.models`
    filters: the catalog's current models, and those the source dropped that a current override
    keeps, each as the catalog prices it (`priced_now`)."""
    found = catalog.models(provider=provider, mode=mode, text=text)
    needle = text.lower() if text else None
    now = datetime.now(UTC)
    kept = []
    for key in catalog.overridden():
        if key in catalog.current or (needle is not None and needle not in key.lower()):
            continue
        pv = priced_now(catalog, key, now)
        if pv is None or (provider is not None and pv.provider != provider):
            continue
        if mode is None or pv.mode == mode:
            kept.append(pv)
    return sorted([*found, *kept], key=lambda pv: pv.model) if kept else found


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
        """The models a call can be priced with now, sorted by name, filtered by provider, mode
        and text; cursor-paginated."""
        live: LiveCatalog = state.live
        catalog = live.require()
        found = priced_models(catalog, provider=provider, mode=mode, text=q)
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
