"""The cost of a model call: resolve the model, pick the price version of its time, price it.

The request and result shapes are the interface (docs/costs.md, "The request", "The answer"):
the HTTP body of `POST /v1/costs/calculate` and one JSON line of `aiserver-costs calc --batch`.
Decimals are exact, and strings in JSON.

A request's `usage` is ours, or, with `usage_format`, the provider's own usage object
(docs/usage-formats.md). msgspec cannot decode a field as "a Usage or any other object", so
`usage` is decoded as it comes (`Usage | Any`: msgspec keeps the decoded object, and the OpenAPI
schema shows both) and read once the request is built: ours at once in `__post_init__`, with the
errors msgspec would give for a `Usage` field (so a malformed request fails to decode, as
before; `BatchRequest` decodes its items one by one to name the item), a provider's when the call
is priced (so that its errors are the call's own, one batch item's and not the batch's).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Union

import msgspec

from aiserver.costs.catalog import Catalog
from aiserver.costs.money import money
from aiserver.costs.pricing import CostComponent, ServiceTier, Usage, quote
from aiserver.costs.pricing.usage import check_in_utc
from aiserver.costs.usage_formats import UsageFormat, convert_usage, read_usage

CURRENCY: Final = "USD"

ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
#: A request's usage: ours, or the provider's object that `usage_format` names. `Union` rather
#: than `|`: `Usage | Any` is not an expression on Python 3.11's `typing.Any`.
UsageField = Annotated[
    Union[Usage, Any],  # noqa: UP007
    msgspec.Meta(
        description="What the call used: a Usage, or with usage_format the provider's own usage "
        "object (docs/usage-formats.md)"
    ),
]


class CostRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One call to price. After construction `usage` is a `Usage` when `usage_format` is None;
    with a format it is the provider's object, which `calculate` reads (`read_usage`)."""

    model: ModelName
    provider: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    usage: UsageField = msgspec.field(default_factory=Usage)
    usage_format: Annotated[
        UsageFormat | None,
        msgspec.Meta(description="The provider whose own usage object `usage` is; null: ours"),
    ] = None
    service_tier: ServiceTier = "standard"
    at: datetime | None = None

    def __post_init__(self) -> None:
        if self.usage_format is None and type(self.usage) is not Usage:
            msgspec.structs.force_setattr(self, "usage", convert_usage(self.usage))


class CostResult(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    provider: str
    matched_by: str
    price_version: int  # 0: a model only an operator's override prices (none in the source)
    catalog_version: int
    currency: str
    total: Decimal
    components: tuple[CostComponent, ...]
    unpriced: tuple[str, ...]
    notes: tuple[str, ...]
    at: datetime
    override_id: int | None = None


class ComponentOut(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    quantity: int
    unit_price: str
    cost: str


class CostResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A cost result on the wire: money as exact decimal strings."""

    model: str
    provider: str
    matched_by: str
    #: null: a model only an operator's override prices, with no price version in the source
    price_version: int | None
    catalog_version: int
    currency: str
    total: str
    components: tuple[ComponentOut, ...]
    unpriced: tuple[str, ...]
    notes: tuple[str, ...]
    at: datetime
    override_id: int | None = None

    @classmethod
    def of(cls, result: CostResult) -> CostResponse:
        return cls(
            model=result.model,
            provider=result.provider,
            matched_by=result.matched_by,
            price_version=result.price_version or None,
            catalog_version=result.catalog_version,
            currency=result.currency,
            total=money(result.total),
            components=tuple(
                ComponentOut(
                    name=c.name,
                    quantity=c.quantity,
                    unit_price=money(c.unit_price),
                    cost=money(c.cost),
                )
                for c in result.components
            ),
            unpriced=result.unpriced,
            notes=result.notes,
            at=result.at,
            override_id=result.override_id,
        )


def _nothing_priced(model: str, unpriced: tuple[str, ...]) -> str:
    """The note of a call whose every dimension lacks a price: its total of 0 is a cost unknown."""
    return (
        f"{model!r} has no price for {', '.join(unpriced)}, all that the call used: its cost is "
        "unknown, not 0"
    )


def calculate(
    catalog: Catalog,
    request: CostRequest,
    *,
    now: datetime | None = None,
    prices_at: datetime | None = None,
) -> CostResult:
    """Price `request` with `catalog`. Raises `UnknownModel` or `UsageError` (a usage that cannot
    be priced, or a provider's usage object that cannot be read).

    `prices_at` (aware, in UTC) takes the price version valid then instead of at the call's time
    (the ledger's "earliest price after" a call that had none), and resolves the name as then;
    the call's own time still chooses what depends on it, such as off-peak windows."""
    at = request.at or now or datetime.now(UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)  # a timestamp without offset is read as UTC
    elif at.tzinfo is not UTC:
        check_in_utc(at)  # a 422, not an overflow wherever the time is converted
    notes: tuple[str, ...] = ()
    when = at if prices_at is None else prices_at
    timed = request.at is not None or prices_at is not None
    # the name as the catalog resolved it at `when`: a refresh since then that re-pointed an
    # alias, or added a newer dated key, must not change the model a past call is billed as
    resolution, version = catalog.current_for(
        request.model, request.provider, when if timed else None
    )
    if version is None or (timed and not catalog.holds_at(resolution.key, version, when)):
        # a model gone now, or a call from before its prices last changed: the version valid
        # at `when` (or its last)
        version, note = catalog.version_at(resolution.key, when)
        if note:
            notes = (note,)
    usage = (
        request.usage
        if request.usage_format is None
        else read_usage(request.usage, request.usage_format)
    )
    total, components, unpriced, quote_notes = quote(
        version.prices, usage, request.service_tier, at
    )
    if unpriced and not components:  # its total of 0 is no cost: nothing was priced
        notes = (*notes, _nothing_priced(version.model, unpriced))
    return CostResult(
        model=version.model,
        provider=version.provider,
        matched_by=resolution.matched_by,
        price_version=version.id,
        catalog_version=catalog.version,
        currency=CURRENCY,
        total=total,
        components=components,
        unpriced=unpriced,
        notes=notes + quote_notes if notes else quote_notes,
        at=at,
        override_id=version.override_id,
    )
