"""Compiling one price entry: its price fields parsed once into :class:`CompiledPrices`.

The entry is one value of LiteLLM's ``model_prices_and_context_window.json``, decoded with
``msgspec.json.Decoder(float_hook=decimal.Decimal)``. A catalog compiles each entry once and
prices every call of that model from the result, so everything that depends only on the entry
(field names, thresholds, tiers, the off-peak calendar, provider defaults) is decided here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

import msgspec

from aiserver.costs.pricing.exact import plain, price_of
from aiserver.costs.pricing.fields import (
    CACHE_HIT_ALIAS,
    CACHE_READ_FIELD,
    STRUCTURED_FIELDS,
    TIER_FIELDS,
    is_price_field,
    parse_field,
)
from aiserver.costs.pricing.off_peak import OffPeak, compile_off_peak


class FieldPrices(msgspec.Struct, frozen=True):
    flat: dict[str, Decimal]  # service suffix ("" standard) -> price
    # (threshold, service suffix -> price), highest threshold first
    above: tuple[tuple[int, dict[str, Decimal]], ...]


#: A plain price field as its parts: base field, threshold (None: flat), service suffix.
FieldKey = tuple[str, int | None, str]


class ContextTier(msgspec.Struct, frozen=True):
    start: Decimal
    end: Decimal
    prices: dict[str, Decimal]
    label: str


class QueryTier(msgspec.Struct, frozen=True):
    low: Decimal
    high: Decimal
    price: Decimal


class CompiledPrices(msgspec.Struct, frozen=True, eq=False):
    """One entry, parsed once for fast repeated pricing. Treat it as immutable.

    Compared by identity: its memo of pricing plans grows as it prices calls.
    """

    fields: dict[str, FieldPrices]
    inclusive_thresholds: bool
    context_tiers: tuple[ContextTier, ...]
    query_tiers: tuple[QueryTier, ...]
    off_peak: OffPeak | None
    search_context: dict[str, Decimal]
    ignored_fields: tuple[str, ...]  # price fields present and not understood
    invalid_fields: tuple[str, ...]  # understood fields whose value is not a usable price
    provider: str | None
    default_cache_read_ratio: Decimal | None  # of the input price, when no cache_read price
    thresholds: tuple[int, ...]  # every long-context threshold of the entry, ascending
    services: frozenset[str]  # the service tier suffixes the entry has any price for
    # The prices an operator's override set: they win over the tiered_pricing ranges, the
    # off-peak prices and the max_results tiers (see :class:`.regime.Resolver`).
    overridden: frozenset[FieldKey]
    # Pricing plans (:class:`.plan.Plan`) per regime and usage mask, filled on first use. The
    # only mutable part; it holds values derived from the fields above, so a CompiledPrices still
    # behaves as immutable. Typed loosely because the plans are built from compiled entries.
    tables: dict[tuple[Any, ...], Any]


# LiteLLM bills xAI's long-context prices once the prompt reaches the threshold (>=), following
# xAI's published billing; every other provider bills above it (>).
_INCLUSIVE_THRESHOLD_PROVIDERS: Final = frozenset(("xai",))

# Fireworks bills cached prompt tokens at half the input price unless a model says otherwise.
# LiteLLM applies the same default (FIREWORKS_AI_DEFAULT_CACHE_READ_RATE_RATIO).
_DEFAULT_CACHE_READ_RATIO: Final[Mapping[str, Decimal]] = {"fireworks_ai": Decimal("0.5")}

_TIER_KEYS: Final = frozenset(("range", "max_results_range", "input_cost_per_query", *TIER_FIELDS))


def compile_entry(entry: Mapping[str, Any], overridden: Collection[str] = ()) -> CompiledPrices:
    """Parse the price fields of one entry once; price calls with :func:`price_call`.

    `overridden` names the fields of the entry that an operator's override set (laid over the
    source's entry): their prices are what is charged (see :class:`.regime.Resolver`)."""
    flat: dict[str, dict[str, Decimal]] = {}
    above: dict[str, dict[int, dict[str, Decimal]]] = {}
    ignored: list[str] = []
    invalid: list[str] = []
    marks: set[FieldKey] = set()
    for name, value in entry.items():
        if name in STRUCTURED_FIELDS or value is None:
            continue
        parsed = parse_field(name)
        if parsed is None:
            if is_price_field(name):
                ignored.append(name)
            continue
        price = price_of(value)
        if price is None:
            invalid.append(name)
            continue
        if name in overridden:
            marks.add((parsed.base, parsed.threshold, parsed.service))
        if parsed.threshold is None:
            flat.setdefault(parsed.base, {})[parsed.service] = price
        else:
            by_threshold = above.setdefault(parsed.base, {})
            by_threshold.setdefault(parsed.threshold, {})[parsed.service] = price
    alias = flat.pop(CACHE_HIT_ALIAS, None)
    by_alias = (CACHE_HIT_ALIAS, None, "") in marks
    marks.discard((CACHE_HIT_ALIAS, None, ""))
    if alias is not None:
        if CACHE_READ_FIELD not in flat:
            flat[CACHE_READ_FIELD] = alias
        elif by_alias and (CACHE_READ_FIELD, None, "") not in marks:
            # The operator set the cache read price under DeepSeek's name for it: theirs wins
            # over the source's under the other name (which would otherwise win, unused).
            flat[CACHE_READ_FIELD] = {**flat[CACHE_READ_FIELD], **alias}
        if by_alias:
            marks.add((CACHE_READ_FIELD, None, ""))
    fields = {
        base: FieldPrices(
            flat=flat.get(base, {}),
            above=tuple(sorted(above.get(base, {}).items(), reverse=True)),
        )
        for base in {*flat, *above}
    }
    context_tiers, query_tiers = _compile_tiers(entry.get("tiered_pricing"), ignored, invalid)
    provider = entry.get("litellm_provider")
    provider = provider if isinstance(provider, str) else None
    return CompiledPrices(
        fields=fields,
        inclusive_thresholds=provider in _INCLUSIVE_THRESHOLD_PROVIDERS,
        context_tiers=context_tiers,
        query_tiers=query_tiers,
        off_peak=compile_off_peak(entry.get("off_peak_pricing"), ignored, invalid),
        search_context=_compile_search_context(entry.get("search_context_cost_per_query"), invalid),
        ignored_fields=tuple(sorted(set(ignored))),
        invalid_fields=tuple(sorted(set(invalid))),
        provider=provider,
        default_cache_read_ratio=_DEFAULT_CACHE_READ_RATIO.get(provider or ""),
        thresholds=tuple(sorted({t for prices in fields.values() for t, _ in prices.above})),
        services=frozenset(
            service
            for prices in fields.values()
            for by_service in (prices.flat, *(by for _, by in prices.above))
            for service in by_service
            if service
        ),
        overridden=frozenset(marks),
        tables={},
    )


def _pair(value: object) -> tuple[Decimal, Decimal] | None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        return None
    low, high = (price_of(bound) for bound in value)
    if low is None or high is None or low > high:
        return None
    return low, high


def _compile_tiers(
    value: object, ignored: list[str], invalid: list[str]
) -> tuple[tuple[ContextTier, ...], tuple[QueryTier, ...]]:
    if value is None:
        return (), ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        invalid.append("tiered_pricing")
        return (), ()
    context: list[ContextTier] = []
    queries: list[QueryTier] = []
    for tier in value:
        if not isinstance(tier, Mapping):
            invalid.append("tiered_pricing")
            continue
        ignored.extend(f"tiered_pricing.{key}" for key in tier if key not in _TIER_KEYS)
        if "max_results_range" in tier:
            bounds = _pair(tier["max_results_range"])
            price = price_of(tier.get("input_cost_per_query"))
            if bounds is None or price is None:
                invalid.append("tiered_pricing")
                continue
            queries.append(QueryTier(low=bounds[0], high=bounds[1], price=price))
            continue
        bounds = _pair(tier.get("range"))
        prices = {
            name: price for name in TIER_FIELDS if (price := price_of(tier.get(name))) is not None
        }
        # As in LiteLLM, a tier without an input price is no tier to bill a prompt by.
        if bounds is None or "input_cost_per_token" not in prices:
            invalid.append("tiered_pricing")
            continue
        label = f"({plain(bounds[0])}, {plain(bounds[1])}]"
        context.append(ContextTier(start=bounds[0], end=bounds[1], prices=prices, label=label))
    context.sort(key=lambda tier: tier.start)
    return tuple(context), tuple(queries)


def _compile_search_context(value: object, invalid: list[str]) -> dict[str, Decimal]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        invalid.append("search_context_cost_per_query")
        return {}
    prices: dict[str, Decimal] = {}
    for size in ("low", "medium", "high"):
        raw = value.get(f"search_context_size_{size}")
        if raw is None:
            continue
        price = price_of(raw)
        if price is None:
            invalid.append("search_context_cost_per_query")
            continue
        prices[size] = price
    return prices
