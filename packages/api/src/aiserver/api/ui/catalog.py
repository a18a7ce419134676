"""Catalog: search the models of the price catalog; one model with its current prices and the
history of its input and output prices (a chart and its table).

The models are the live catalog's, as `GET /v1/models` and `GET /v1/models/{model}` serve them
(the same summaries and details); every signed-in viewer sees the catalog.
"""

from __future__ import annotations

import re
from typing import Any, Final

from litestar import Controller, Request, get
from litestar.params import FromPath
from litestar.response import Template

from aiserver.api.controllers.models import (
    model_detail,
    one_price,
    price_of,
    priced_models,
    summary,
)
from aiserver.api.ui.present import SHOW, per_million, places, timestamp
from aiserver.api.ui.sessions import PATH
from aiserver.api.ui.viewer import signed_in, viewer
from aiserver.costs.catalog import PriceVersion
from aiserver.costs.live import LiveCatalog

AnyRequest = Request[Any, Any, Any]

#: Models listed at once; a narrower search finds the rest.
SHOWN: Final = 200
#: The list's prices per million tokens line up their decimal points up to this many decimals
#: (providers publish at most 4 or 5); a price of more, a binary float's digits in the source,
#: is shown whole past the points (`places`).
ALIGNED_PLACES: Final = 6
#: The price fields the list has columns of; a model's other `..._cost_per_<unit>` prices (an
#: image model's per image or per pixel, audio per second) are listed beside them, so that a
#: model priced by another unit never reads as free.
TOKEN_PRICES: Final = ("input_cost_per_token", "output_cost_per_token")
#: The prices a model's history chart draws, with their labels: per million tokens, as
#: providers publish them (`per_million`: exact, the API's per-token string with its point moved).
CHARTED: Final = (("input_cost_per_token", "input per 1M tokens"),
                  ("output_cost_per_token", "output per 1M tokens"))  # fmt: skip


class CatalogPages(Controller):
    path = PATH + "/catalog"
    include_in_schema = False
    guards = (signed_in,)

    @get("/")
    async def models(self, request: AnyRequest) -> Template:
        live: LiveCatalog = request.app.state.live
        catalog = live.require()
        params = request.query_params
        typed = {name: params.get(name, "").strip() for name in ("q", "provider", "mode")}
        found = priced_models(catalog, provider=typed["provider"] or None,
                              mode=typed["mode"] or None, text=typed["q"] or None)  # fmt: skip
        models = [summary(pv) for pv in found[:SHOWN]]
        return Template(
            template_name="catalog.html",
            context={
                "viewer": viewer(request), "page": "catalog", "typed": typed, "models": models,
                "inputs": [per_million(m.input_cost_per_token) for m in models],
                "outputs": [per_million(m.output_cost_per_token) for m in models],
                "others": [other_prices(pv) for pv in found[:SHOWN]],
                "found": len(found),
                "shown": SHOWN, "catalog_version": catalog.version, "show": SHOW,
                "aligned_places": ALIGNED_PLACES,
            },
        )  # fmt: skip

    @get("/{model:path}")
    async def model(self, request: AnyRequest, model: FromPath[str]) -> Template:
        live: LiveCatalog = request.app.state.live
        catalog = live.require()
        name, provider = model.lstrip("/"), request.query_params.get("provider") or None
        detail = model_detail(catalog, name, provider)
        history = catalog.history(catalog.resolve(name, provider).key)
        # a version without a price is a gap in its line (null), as the table says "none":
        # never 0, which would be a price
        rows = [
            (timestamp(v.valid_from), [per_million(price_of(v, field)) for field, _ in CHARTED])
            for v in history
        ]
        chart = {
            "kind": "step",
            "labels": [label for label, _ in rows],
            "series": [
                {"label": text, "values": [cells[i] for _, cells in rows]}
                for i, (_, text) in enumerate(CHARTED)
            ],
            "currency": "USD",
        }
        return Template(
            template_name="model.html",
            context={
                "viewer": viewer(request), "page": "catalog", "detail": detail,
                "history": history, "chart": chart, "charted": CHARTED, "show": SHOW,
                "prices": [cells for _, cells in rows],  # per version, as the chart has them
                # each price column at its own scale (the chart keeps the exact strings)
                "places": {field: places(cells[i] for _, cells in rows)
                           for i, (field, _) in enumerate(CHARTED)},
            },
        )  # fmt: skip


def other_prices(pv: PriceVersion) -> list[str]:
    """A model's prices of other units than its input and output tokens, each in words with its
    exact price: `per image (output) 0.04`, `per pixel (input) 0.0000000839233`. A price per
    token of some kind or tier (audio, reasoning; batches, priority, above 200k tokens) is per
    million, as the list's columns are: `per 1M tokens (input, batches) 1.25`. A price given per
    option (a search's context size) is named once per option."""
    found = []
    for name in sorted(pv.entry):
        cache = _CACHE_PRICE.fullmatch(name)
        if cache is not None:
            price = one_price(pv.entry[name])
            if price is not None:
                found.append(_cache_price_in_words(cache, price))
            continue
        direction, _, unit = name.partition("_cost_per_")
        if name.startswith("cost_per_"):  # a price of the call, of no direction (per second)
            direction, unit = "", name.removeprefix("cost_per_")
        if not unit or name in TOKEN_PRICES:
            continue
        given = pv.entry[name]
        options = given.items() if isinstance(given, dict) else [(None, given)]
        for option, value in sorted(options, key=lambda o: o[0] or ""):
            price = one_price(value)
            if price is not None:
                found.append(_price_in_words(direction, unit, option, price))
    return found


#: A price of tokens read from or written to a prompt cache, of some kind and tier
#: (`cache_read_input_audio_token_cost`, `cache_creation_input_token_cost_above_1hr_priority`).
_CACHE_PRICE: Final = re.compile(
    r"(?:(?P<how>[a-z]+)_)?cache_(?P<use>read|creation)_input_(?:(?P<kind>[a-z]+)_)?token_cost"
    r"(?:_(?P<tier>.+))?"
)


def _cache_price_in_words(cache: re.Match[str], price: str) -> str:
    """`per 1M tokens (cache read) 0.07`, `per 1M tokens (cache write 1h, above 200k tokens)
    7.5`: per million, as the list's columns; a write kept an hour is the calculator's
    `cache_write_1h`."""
    what = ["cache read" if cache["use"] == "read" else "cache write"]
    if cache["how"]:  # "explicit_cache_read_...": "explicit cache read"
        what[0] = f"{cache['how']} {what[0]}"
    tier = cache["tier"] or ""
    held = re.match(r"above_(\d+)hr(?:_|$)", tier)  # a write kept 1 hour: `cache_write_1h`
    if held is not None:
        what[0], tier = f"{what[0]} {held[1]}h", tier[held.end() :]
    return _tokens_in_words(cache["kind"], what, tier.replace("_above_", ", above "), price)


#: A unit that is a token of some kind (`audio_token`) and tier (`token_batches`,
#: `token_above_272k_tokens_priority`).
_TOKEN_UNIT: Final = re.compile(r"(?:(?P<kind>[a-z]+)_)?token(?:_(?P<tier>.+))?")


def _price_in_words(direction: str, unit: str, option: str | None, price: str) -> str:
    what = [_words(direction)] if direction else []
    if option is not None:  # "search_context_size_low" of search_context: "size low"
        option = option.removeprefix(f"{direction}_")
    token = _TOKEN_UNIT.fullmatch(unit)
    if token is not None:
        tier = token["tier"] or ""
        return _tokens_in_words(token["kind"], what, tier, price, option)
    if option is not None:
        what.append(_words(option))
    return f"per {_words(unit)}{_of(what)} {price}"


def _tokens_in_words(
    kind: str | None, what: list[str], tier: str, price: str, option: str | None = None
) -> str:
    """A price per token (of a `kind`: audio, reasoning), per million as the list's columns
    are, with what it is of (`what`), its `tier` (`above_272k_tokens_priority`: "above 272k
    tokens, priority") and `option` in words: `per 1M audio tokens (input, batches) 40`."""
    if tier:
        what = [*what, _words(tier.replace("_tokens_", " tokens, "))]
    if option is not None:
        what = [*what, _words(option)]
    return f"per 1M {f'{kind} ' if kind else ''}tokens{_of(what)} {per_million(price)}"


def _of(what: list[str]) -> str:
    """What a price is of, in brackets after its unit: ` (input, batches)`; none: nothing."""
    return f" ({', '.join(what)})" if what else ""


def _words(name: str) -> str:
    return name.replace("_", " ")
