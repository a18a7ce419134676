"""Usage events as FinOps FOCUS 1.2 rows (the FinOps Open Cost and Usage Specification), so that
finance tools ingest them as they ingest a cloud bill.

One row per **priced component** of an event (its input tokens, its output tokens, its cache
reads, ...): a FOCUS row is one SKU's charge, with one quantity and one unit price, and FOCUS
requires `ListUnitPrice × PricingQuantity = ListCost`, which holds exactly for a component
(`cost = quantity × unit_price`). The rows of an event add up to its total.

- The costs are aiserver's prices (the catalog's list prices, or the operator's override):
  BilledCost = EffectiveCost = ListCost = ContractedCost = the component's cost, in USD. aiserver
  knows no discount or commitment of the provider's; the provider's invoice is the authority.
- ChargePeriodStart/End: the hour of the call on the project's clock (`[hour, hour + 1h)`);
  BillingPeriodStart/End: its calendar month on the project's clock, as the dashboard and
  `GET /v1/spend` count months, so that a month's rows tie out with them. Every time is written
  in UTC, `YYYY-MM-DDTHH:mm:ssZ` (a New York November is `2026-11-01T04:00:00Z` to
  `2026-12-01T05:00:00Z`).
- The billing account and the sub-account are the project (its slug and name).
- ProviderName, PublisherName, InvoiceIssuerName: the provider the catalog priced the call as;
  ResourceId/ResourceName: the catalog's model; SkuId: `provider/model/component`; SkuPriceId
  adds the price version (or the override) that priced it and the unit price, which tells a
  batch or long-context price of the same version apart: one id, one price.
- **An unpriced event has no row**: FOCUS requires a unit price and a cost for every usage row,
  and a 0 would read as "free". The export counts them instead (the API's
  `X-Unpriced-Events` header, the command line's summary); the `csv` and `jsonl` formats hold
  them. A partially priced event has the rows of its priced components, and its
  `x_PricingStatus` and `x_UnpricedDimensions` say what is missing from its cost.
- Columns FOCUS does not define are after FOCUS's and start with `x_`, as FOCUS requires.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

import msgspec

from aiserver.costs.calculator import CURRENCY
from aiserver.costs.money import money
from aiserver.costs.pricing.dimensions import BY_NAME
from aiserver.ledger.budgets.periods import window_of
from aiserver.ledger.spend.buckets import clock_hour, clock_hour_start

if TYPE_CHECKING:
    import asyncpg

    from aiserver.ledger.store import Project

COLUMNS: Final = (
    # FOCUS 1.2 columns, alphabetical
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass",
    "ChargeDescription", "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart",
    "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "ContractedUnitPrice",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "ListUnitPrice", "PricingCategory",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ResourceId",
    "ResourceName", "ResourceType", "ServiceCategory", "ServiceName", "ServiceSubcategory",
    "SkuId", "SkuMeter", "SkuPriceId", "SubAccountId", "SubAccountName", "SubAccountType",
    "Tags",
    # aiserver's own
    "x_EventId", "x_EventKey", "x_OccurredAt", "x_Model", "x_Provider", "x_ServiceTier",
    "x_PricingStatus", "x_UnpricedDimensions", "x_PriceVersion", "x_CatalogVersion",
    "x_OverrideId",
)  # fmt: skip
#: The columns of named text (event keys, models, providers, project names): written so that a
#: spreadsheet never reads them as a formula (`aiserver.ledger.usage.export.CsvTable`).
TEXT: Final = (
    "BillingAccountId", "BillingAccountName", "InvoiceIssuerName", "ProviderName",
    "PublisherName", "ResourceId", "ResourceName", "ServiceName", "SkuId", "SkuPriceId",
    "SubAccountId", "SubAccountName", "x_EventKey", "x_Model", "x_Provider", "x_ServiceTier",
)  # fmt: skip

#: The unit of a component that is not counted in tokens (FOCUS's Unit Format: plural units).
_UNITS: Final = {
    "images": "Images", "input_images": "Images", "input_pixels": "Pixels",
    "output_pixels": "Pixels", "requests": "Requests", "seconds": "Seconds",
    "input_seconds": "Seconds", "output_seconds": "Seconds", "input_audio_seconds": "Seconds",
    "input_video_seconds": "Seconds", "output_video_seconds": "Seconds",
    "input_characters": "Characters", "output_characters": "Characters", "queries": "Queries",
    "web_searches": "Queries", "maps_grounding_queries": "Queries", "pages": "Pages",
    "annotated_pages": "Pages",
}  # fmt: skip
_COMPONENTS: Final = msgspec.json.Decoder(list[tuple[str, int, Decimal, Decimal]])
_LIST: Final = msgspec.json.Encoder()


def unit(component: str) -> str:
    """The FOCUS unit of a component's quantity: `Tokens` for the token counts."""
    dimension = BY_NAME.get(component)
    if dimension is not None and dimension.tokens:
        return "Tokens"
    return _UNITS.get(component, "Units")


def second(at: datetime) -> str:
    """FOCUS's date/time format: `YYYY-MM-DDTHH:mm:ssZ`, in UTC."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hour_of(at: datetime, time_zone: str) -> datetime:
    """The start of the hour of the clock of `time_zone` that holds `at` (in UTC), in UTC, as
    spend's hour buckets cut it: an hour of Asia/Kolkata begins at half past a UTC hour, and
    Lord Howe's repeated half hour is one of its own."""
    if time_zone == "UTC":
        return at.replace(minute=0, second=0, microsecond=0)
    # per event: the start only (its end is worked out once per hour, in `_periods`)
    return clock_hour_start(at, ZoneInfo(time_zone)).astimezone(UTC)


@functools.lru_cache(maxsize=64)
def _periods(hour: datetime, time_zone: str) -> tuple[str, str, str, str]:
    """ChargePeriodStart and End (the hour, `_hour_of`: an hour of the clock, or the part of
    one that a change of its offset cuts), BillingPeriodStart and End (its month on the clock
    of `time_zone`, as budgets and spend count months); the events of an export come in time
    order, so one hour's are worked out once."""
    start, end = window_of("month", time_zone, hour)
    if end is None:  # pragma: no cover - only a total budget's window has no end
        raise AssertionError("a month has an end")
    if time_zone == "UTC":
        hour_end = hour + timedelta(hours=1)
    else:
        hour_end = clock_hour(hour, ZoneInfo(time_zone))[1].astimezone(UTC)
    return second(hour), second(hour_end), second(start), second(end)


#: Where each value that differs between an event's components goes in a row.
_PER_COMPONENT: Final = tuple(
    COLUMNS.index(column)
    for column in (
        "BilledCost", "ContractedCost", "EffectiveCost", "ListCost", "ContractedUnitPrice",
        "ListUnitPrice", "ConsumedQuantity", "PricingQuantity", "ConsumedUnit", "PricingUnit",
        "ChargeDescription", "SkuId", "SkuMeter", "SkuPriceId",
    )
)  # fmt: skip


def _priced_by(price_version: int | None, override_id: int | None) -> str:
    """What priced an event, as `SkuPriceId` ends: its price version, the operator's override
    laid over it (`v812+override7`), or the override alone (a model only an override prices).
    Events recorded before override-only models had no price version stored 0 for it."""
    parts = []
    if price_version:
        parts.append(f"v{price_version}")
    if override_id is not None:
        parts.append(f"override{override_id}")
    return "+".join(parts)


def rows(project: Project, row: asyncpg.Record) -> list[list[Any]]:
    """The FOCUS rows of one event, in `COLUMNS`' order: one per priced component; none for an
    unpriced event."""
    if row["status"] == "unpriced" or not row["components"]:
        return []
    occurred: datetime = row["occurred_at"]
    if occurred.tzinfo is not UTC:
        occurred = occurred.astimezone(UTC)
    charge_start, charge_end, billing_start, billing_end = _periods(
        _hour_of(occurred, project.time_zone), project.time_zone
    )
    provider: str = row["matched_provider"]
    model: str = row["matched_model"]
    unpriced = list(row["unpriced"] or ())
    missing = (
        f"; the call also used {', '.join(unpriced)}, which the catalog has no price for: "
        "not in this cost"
        if unpriced
        else ""
    )
    priced_by = _priced_by(row["price_version"], row["override_id"])
    tier = row["service_tier"]
    tier_said = "" if tier == "standard" else f" ({tier} tier)"
    shared = {
        "BillingAccountId": project.slug,
        "BillingAccountName": project.name,
        "BillingCurrency": CURRENCY,
        "BillingPeriodEnd": billing_end,
        "BillingPeriodStart": billing_start,
        "ChargeCategory": "Usage",
        "ChargeClass": None,
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": charge_end,
        "ChargePeriodStart": charge_start,
        "InvoiceIssuerName": provider,
        "PricingCategory": "Standard",
        "ProviderName": provider,
        "PublisherName": provider,
        "ResourceId": model,
        "ResourceName": model,
        "ResourceType": "Model",
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": f"{provider} API",
        "ServiceSubcategory": "Generative AI",
        "SubAccountId": project.slug,
        "SubAccountName": project.name,
        "SubAccountType": "Project",
        "Tags": row["tags"],
        "x_EventId": row["id"],
        "x_EventKey": row["event_key"],
        "x_OccurredAt": occurred.isoformat().replace("+00:00", "Z"),
        "x_Model": row["model"],
        "x_Provider": row["provider"],
        "x_ServiceTier": row["service_tier"],
        "x_PricingStatus": row["status"],
        "x_UnpricedDimensions": _LIST.encode(unpriced).decode(),
        "x_PriceVersion": row["price_version"] or None,  # 0: see `_priced_by`
        "x_CatalogVersion": row["catalog_version"],
        "x_OverrideId": row["override_id"],
    }
    base = [shared.get(column) for column in COLUMNS]
    lines = []
    for name, quantity, unit_price, cost in _COMPONENTS.decode(row["components"]):
        units = unit(name)
        price, amount = money(unit_price), money(cost)
        sku = f"{provider}/{model}/{name}"
        what = f"{name} tokens" if units == "Tokens" else name
        line = base.copy()
        for index, value in zip(
            _PER_COMPONENT,
            (
                amount, amount, amount, amount, price, price, quantity, quantity, units, units,
                f"{quantity} {what} of {model} at {price} {CURRENCY} each{tier_said}{missing}",
                sku, name, f"{sku}@{priced_by}:{price}",
            ),
            strict=True,
        ):  # fmt: skip
            line[index] = value
        lines.append(line)
    return lines
