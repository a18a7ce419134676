"""The cost of a model call: resolve the model, pick the price version of its time, price it.

The request and result shapes are the interface (docs/costs.md, "The request", "The answer"):
the HTTP body of `POST /v1/costs/calculate` and one JSON line of `aiserver-costs calc --batch`.
Decimals are exact, and strings in JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Final

import msgspec

from aiserver.costs.catalog import Catalog
from aiserver.costs.money import money
from aiserver.costs.pricing import CostComponent, ServiceTier, Usage, quote

CURRENCY: Final = "USD"

ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class CostRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: ModelName
    provider: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    service_tier: ServiceTier = "standard"
    at: datetime | None = None


class CostResult(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    provider: str
    matched_by: str
    price_version: int
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
    price_version: int
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
            price_version=result.price_version,
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


def calculate(catalog: Catalog, request: CostRequest, *, now: datetime | None = None) -> CostResult:
    """Price `request` with `catalog`. Raises `UnknownModel` or `UsageError` (pricing)."""
    at = request.at or now or datetime.now(UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)  # a timestamp without offset is read as UTC
    notes: tuple[str, ...] = ()
    resolution, version = catalog.current_for(request.model, request.provider)
    if version is None or (
        request.at is not None and not catalog.holds_at(resolution.key, version, at)
    ):
        # a model gone now, or a call from before its prices last changed: the version valid
        # at `at` (or its last)
        version, note = catalog.version_at(resolution.key, at)
        if note:
            notes = (note,)
    total, components, unpriced, quote_notes = quote(
        version.prices, request.usage, request.service_tier, at
    )
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
