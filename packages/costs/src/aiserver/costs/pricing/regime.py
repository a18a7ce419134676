"""Which price applies to each dimension in one pricing regime.

A regime is what chooses among an entry's prices besides the counts: the service tier, the
long-context thresholds the prompt crosses, the ``tiered_pricing`` range of the prompt, and
whether an off-peak window is open. :class:`Resolver` answers, for one regime, each dimension's
price and how it was found (its own, a fallback dimension's, or derived), which is what the
notes explain. Both pricers use it: the fast one once per plan, the reference one per call.

A price an operator's override set (``CompiledPrices.overridden``) wins over the range's, the
window's and the max_results tier's price of its field: the operator cannot set those (they are
structured fields), and expects the price they set to be the one charged.
"""

from __future__ import annotations

import bisect
from datetime import datetime
from decimal import Decimal
from typing import Final, Literal, NamedTuple

from aiserver.costs.pricing.dimensions import BY_NAME, SERVICE_SUFFIX, SUFFIX_SERVICE, Dimension
from aiserver.costs.pricing.entry import CompiledPrices, ContextTier
from aiserver.costs.pricing.exact import EXACT, plain
from aiserver.costs.pricing.fields import TIER_OWNED
from aiserver.costs.pricing.off_peak import OffPeak, is_off_peak

_BATCH: Final = SERVICE_SUFFIX["batch"]


class Rate(NamedTuple):
    price: Decimal
    standard_for_tier: bool  # a non-standard service tier was asked and a standard price used
    threshold: int | None  # the long-context threshold of the price, if any
    source: Literal["entry", "tier", "off_peak", "derived"]
    # batch: the highest threshold the prompt crosses, when the batch price used is one below
    # it (the tier has no long-context price there), however the standard price rises above it
    passed: int | None = None


class Priced(NamedTuple):
    """How one dimension is priced in one pricing regime."""

    rate: Rate | None
    fallback: str | None  # the dimension whose price it uses, for want of its own
    derived: str | None  # why its price is derived rather than read


class Resolver:
    """Resolves the prices of one regime: service tier, long-context band, tier, off-peak."""

    __slots__ = (
        "compiled",
        "derived",
        "fallbacks",
        "off_peak",
        "prompt",
        "rates",
        "service",
        "tier",
    )

    def __init__(
        self,
        compiled: CompiledPrices,
        prompt: int,
        service: str,
        tier: ContextTier | None,
        off_peak: OffPeak | None,
    ) -> None:
        self.compiled = compiled
        self.prompt = prompt  # any prompt size in the band: it crosses the same thresholds
        self.service = service  # the service tier's suffix, "" for standard
        self.tier = tier
        self.off_peak = off_peak  # None unless a window is open
        self.rates: dict[str, Rate | None] = {}
        self.fallbacks: dict[str, str] = {}
        self.derived: dict[str, str] = {}

    def own(self, field: str) -> Rate | None:
        """The entry's own price for a field, without fallbacks to other dimensions."""
        asks_tier = self.service != ""
        overriding = self.overriding(field)
        if overriding is not None:
            return overriding
        # An off-peak price replaces whatever would apply otherwise, long-context included,
        # as LiteLLM bills it: DeepSeek publishes one off-peak price per token type.
        if self.off_peak is not None and field in self.off_peak.prices:
            return Rate(self.off_peak.prices[field], asks_tier, None, "off_peak")
        if self.tier is not None:
            if field in self.tier.prices:
                return Rate(self.tier.prices[field], asks_tier, None, "tier")
            if field in TIER_OWNED:
                return None
        found = self._plain(field)
        return None if found is None else found[0]

    def overriding(self, field: str) -> Rate | None:
        """The field's plain price (its long-context band's, its service tier's) when an
        operator's override set it; it wins over the range's, window's and query tier's."""
        if not self.compiled.overridden:
            return None
        found = self._plain(field)
        if found is None:
            return None
        rate, service = found
        return rate if (field, rate.threshold, service) in self.compiled.overridden else None

    def _plain(self, field: str) -> tuple[Rate, str] | None:
        """The field's price by the prompt's long-context band and the service tier, as the
        entry's plain price fields give it, with the service suffix of the field used."""
        prices = self.compiled.fields.get(field)
        if prices is None:
            return None
        asks_tier = self.service != ""
        crossed = [
            (threshold, by_service)
            for threshold, by_service in prices.above  # the highest first
            if self.prompt > threshold
            or (self.compiled.inclusive_thresholds and self.prompt == threshold)
        ]
        if self.service == _BATCH:
            # The batch tier's own prices, as LiteLLM bills batch (get_batch_cost_rates): its
            # long-context price for the highest threshold crossed that has one, else its flat
            # price, even above a threshold whose standard long-context price is higher. The
            # standard prices only where the tier has no price for the field at all.
            for threshold, by_service in crossed:
                if _BATCH in by_service:
                    return Rate(by_service[_BATCH], False, threshold, "entry"), _BATCH
            if _BATCH in prices.flat:
                passed = crossed[0][0] if crossed else None
                return Rate(prices.flat[_BATCH], False, None, "entry", passed), _BATCH
        # The highest threshold the prompt crosses that prices this field wins. At a threshold,
        # the service tier's long-context price comes first, then the standard long-context
        # price (LiteLLM does the same for priority and flex): the context tier changes the
        # price more than the service tier does.
        for threshold, by_service in crossed:
            if asks_tier and self.service in by_service:
                return Rate(by_service[self.service], False, threshold, "entry"), self.service
            if "" in by_service:
                return Rate(by_service[""], asks_tier, threshold, "entry"), ""
        if asks_tier and self.service in prices.flat:
            return Rate(prices.flat[self.service], False, None, "entry"), self.service
        if "" in prices.flat:
            return Rate(prices.flat[""], asks_tier, None, "entry"), ""
        return None

    def rate(self, dim: Dimension) -> Rate | None:
        if dim.name in self.rates:
            return self.rates[dim.name]
        rate = self.own(dim.field)
        if dim.name == "reasoning" and rate is not None and rate.standard_for_tier:
            # Reasoning tokens are output tokens. A service tier that prices output but not
            # reasoning bills reasoning at its output price rather than at the standard
            # reasoning price (LiteLLM does the same).
            output = self.rate(BY_NAME["output"])
            if output is not None and not output.standard_for_tier:
                rate = output
                self.derived[dim.name] = (
                    f"service tier {SUFFIX_SERVICE[self.service]!r} has no reasoning price; "
                    "its output price used"
                )
        if rate is None and dim.name == "cache_read":
            rate = self._default_cache_read()
        if rate is None and dim.fallback is not None:
            # A part of the prompt (or of the output) without a price of its own is billed as
            # ordinary prompt (output) tokens: that is how providers without a separate price
            # bill it, and what LiteLLM does.
            rate = self.rate(BY_NAME[dim.fallback])
            if rate is not None:
                self.fallbacks[dim.name] = dim.fallback
        self.rates[dim.name] = rate
        return rate

    def priced(self, dim: Dimension, query_tier: int, search_context_size: str) -> Priced:
        """How `dim` is priced; `query_tier` (see :func:`query_tier`) and the search context
        size choose the price of queries and web searches."""
        rate = self.rate(dim)
        by_results = dim.name == "queries" and bool(self.compiled.query_tiers)
        if by_results and self.overriding(dim.field) is None:
            rate = Rate(
                self.compiled.query_tiers[query_tier].price, self.service != "", None, "tier"
            )
        elif dim.name == "web_searches":
            price = self.compiled.search_context.get(search_context_size)
            rate = None if price is None else Rate(price, self.service != "", None, "entry")
        return Priced(rate, self.fallbacks.get(dim.name), self.derived.get(dim.name))

    def _default_cache_read(self) -> Rate | None:
        ratio = self.compiled.default_cache_read_ratio
        if ratio is None:
            return None
        input_rate = self.rate(BY_NAME["input"])
        if input_rate is None:
            return None
        self.derived["cache_read"] = (
            f"no cache_read price; {self.compiled.provider} bills cached input at "
            f"{plain(ratio * 100)}% of the input price"
        )
        price = EXACT.multiply(input_rate.price, ratio)
        return Rate(
            price, input_rate.standard_for_tier, input_rate.threshold, "derived", input_rate.passed
        )


def regime(compiled: CompiledPrices, prompt: int, at: datetime) -> tuple[int, int, bool]:
    """The long-context thresholds crossed, the tiered_pricing range index (-1: none) and whether
    an off-peak window is open."""
    thresholds = compiled.thresholds
    if not thresholds:
        band = 0
    elif compiled.inclusive_thresholds:
        band = bisect.bisect_right(thresholds, prompt)
    else:
        # "above 200k tokens" means input_tokens > 200_000, as LiteLLM reads it and as the
        # providers bill: a prompt of exactly 200_000 tokens is billed at the base price.
        band = bisect.bisect_left(thresholds, prompt)
    off_peak = compiled.off_peak
    return (
        band,
        context_tier_index(compiled, prompt),
        off_peak is not None and is_off_peak(off_peak, at),
    )


def context_tier_index(compiled: CompiledPrices, prompt: int) -> int:
    """The index of the tiered_pricing range a prompt is billed by, or -1 without ranges."""
    tiers = compiled.context_tiers
    if not tiers:
        return -1
    # Ranges are (start, end]: a prompt of exactly `end` tokens stays in the lower tier. A prompt
    # in a gap between ranges takes the next higher tier; one past the last range takes the last
    # (LiteLLM agrees, except that it prices an empty prompt without any tier).
    for index, tier in enumerate(tiers):
        if prompt <= tier.end:
            return index
    return len(tiers) - 1


def query_tier(compiled: CompiledPrices, max_results: int | None) -> int:
    """The index of the max_results tier a search call is priced by, or -1 without tiers."""
    if not compiled.query_tiers:
        return -1
    value = 10 if max_results is None else max_results  # LiteLLM's default for search calls
    # Ranges are inclusive at both ends ([1, 10], [11, 20]); past the last, the last tier.
    for index, tier in enumerate(compiled.query_tiers):
        if tier.low <= value <= tier.high:
            return index
    return len(compiled.query_tiers) - 1
