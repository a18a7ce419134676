"""What a recorded call cost: priced as of its `occurred_at`, or why it could not be.

Three outcomes, never a silent $0:

- `priced`: every dimension the call used has a price; `total` is their exact sum;
- `partially_priced`: some dimensions have no price in the model's entry; `total` is what the
  priced ones cost, and `unpriced` names the others;
- `unpriced`: the model is unknown (or was not in the catalog at the time of the call), no
  catalog is loaded yet, or the model is known but nothing the call used has a price in its
  entry (only images, say, of a model priced per token: its cost is unknown, not $0); `total`
  is None, `note` says why and `suggestions` names close models. The event is kept all the
  same: a reprice prices it once the catalog can.

A usage that is wrong (a part larger than its total, ...) is not an outcome: it raises the
costs package's `UsageError`, and the event is invalid.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Final, Literal

import msgspec

from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import Catalog
from aiserver.costs.errors import UnknownModel
from aiserver.costs.pricing import CostComponent, ServiceTier, Usage, validate_usage
from aiserver.ledger.usage.events import CheckedEvent

PricingStatus = Literal["priced", "partially_priced", "unpriced"]
PRICING_STATUSES: Final = ("priced", "partially_priced", "unpriced")


class Valuation(msgspec.Struct, frozen=True, kw_only=True):
    status: PricingStatus
    total: Decimal | None
    components: tuple[CostComponent, ...] = ()
    unpriced: tuple[str, ...] = ()
    note: str | None = None
    suggestions: tuple[str, ...] = ()
    matched_model: str | None = None
    matched_provider: str | None = None
    price_version: int | None = None
    catalog_version: int | None = None
    override_id: int | None = None


def value_event(catalog: Catalog | None, event: CheckedEvent, *, why_none: str = "") -> Valuation:
    """Price `event` with the prices valid at its `occurred_at`. `catalog` None: none is loaded
    yet (`why_none` says why), and the event is kept unpriced."""
    return value_usage(
        catalog,
        model=event.model,
        provider=event.provider,
        usage=event.usage,
        service_tier=event.service_tier,
        occurred_at=event.occurred_at,
        why_none=why_none,
    )


def value_usage(
    catalog: Catalog | None,
    *,
    model: str,
    provider: str | None,
    usage: Usage,
    service_tier: ServiceTier,
    occurred_at: datetime,
    why_none: str = "",
) -> Valuation:
    """`value_event` of what an event holds: at ingest, and again when a reprice prices a
    recorded event with the catalog of today.

    A model the catalog knows, but had no price at `occurred_at` (the source's first version, or
    an operator's first override, came later; or the call fell between two of them) is priced
    with the earliest price version after `occurred_at`, and the note says so: the call was
    made, and that price is the closest one there is.
    """
    if catalog is None:
        validate_usage(usage)
        return Valuation(status="unpriced", total=None, note=why_none or "no catalog is loaded")
    request = CostRequest(
        model=model, provider=provider, usage=usage, service_tier=service_tier, at=occurred_at
    )
    try:
        result = calculate(catalog, request)
    except UnknownModel as exc:
        later = _first_price_after(catalog, model, provider, occurred_at)
        if later is None:
            validate_usage(usage)
            return Valuation(
                status="unpriced",
                total=None,
                note=str(exc),
                suggestions=exc.suggestions,
                catalog_version=catalog.version,
            )
        # the prices of `later`, the call's own time for the rest (its off-peak window)
        result = calculate(catalog, request, prices_at=later)
        note = (
            f"{result.model!r} had no price at {occurred_at.isoformat()}; priced with its "
            f"earliest price after it, from {later.isoformat()}"
        )
        result = msgspec.structs.replace(result, notes=(note, *result.notes))
    notes = "; ".join(result.notes)
    if result.unpriced and not result.components:  # the calculator's notes say so
        return Valuation(
            status="unpriced",
            total=None,
            unpriced=result.unpriced,
            note=notes,
            matched_model=result.model,
            matched_provider=result.provider,
            catalog_version=result.catalog_version,
        )
    return Valuation(
        status="partially_priced" if result.unpriced else "priced",
        total=result.total,
        components=result.components,
        unpriced=result.unpriced,
        note=notes or None,
        matched_model=result.model,
        matched_provider=result.provider,
        # an override-only model (none in the source) has no price version: the calculator's 0
        price_version=result.price_version or None,
        catalog_version=result.catalog_version,
        override_id=result.override_id,
    )


def _first_price_after(
    catalog: Catalog, model: str, provider: str | None, at: datetime
) -> datetime | None:
    """When the model's earliest price version (or override) after `at` begins; None when the
    name resolves to nothing, or the model has no price after `at` either (it was removed)."""
    try:
        key = catalog.resolve(model, provider).key
    except UnknownModel:
        return None
    starts = [v.valid_from for v in catalog.history(key)]
    starts += [o.valid_from for o in catalog.overrides(key)]
    later = [start for start in starts if start > at]
    return min(later) if later else None
