"""The plain reference pricer: the answer of :func:`~.plan.quote`, computed the obvious way.

Validate the call; find the regime from the call itself (the real prompt size against every
threshold, the off-peak windows read as windows); then for each dimension take the rest of its
count from the parts statement, pick its price in the regime, multiply, and add up from 0. No
mask, no plan, no memo, no shortcut. It prices nothing in production: the tests hold the fast
path to it, to the digit, on generated usages over the snapshot's entries.

The price of a dimension in a regime (:class:`.regime.Resolver`) and the wording of the notes
(:mod:`.notes`) are shared with the fast path: they are the rules, not the machinery under test.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiserver.costs.pricing.dimensions import DIMENSIONS, SERVICE_SUFFIX, CostComponent, Quote
from aiserver.costs.pricing.entry import CompiledPrices
from aiserver.costs.pricing.exact import ADD, MULTIPLY, ZERO
from aiserver.costs.pricing.notes import QUERY_TIER_ASSUMED, Note, Used, explain, written
from aiserver.costs.pricing.off_peak import OffPeak
from aiserver.costs.pricing.regime import Resolver, context_tier_index, query_tier
from aiserver.costs.pricing.usage import REST, Usage, check_call


def reference_quote(
    compiled: CompiledPrices, usage: Usage, service_tier: str, at: datetime
) -> Quote:
    """What :func:`~.plan.quote` answers for the call, or the error it raises."""
    check_call(usage, service_tier, at)
    prompt = usage.input_tokens
    tier_index = context_tier_index(compiled, prompt)
    off_peak = compiled.off_peak
    resolver = Resolver(
        compiled,
        prompt,
        SERVICE_SUFFIX[service_tier],
        compiled.context_tiers[tier_index] if tier_index >= 0 else None,
        off_peak if off_peak is not None and _off_peak_open(off_peak, at) else None,
    )
    search_tier = query_tier(compiled, usage.max_results)
    total = ZERO
    components: list[CostComponent] = []
    unpriced: list[str] = []
    used: list[Used] = []
    notes: list[Note] = []
    for dim in DIMENSIONS:
        quantity = rest(usage, dim.count_field)
        if quantity == 0:
            continue
        priced = resolver.priced(dim, search_tier, usage.search_context_size)
        if dim.name == "queries" and compiled.query_tiers and usage.max_results is None:
            notes.append((QUERY_TIER_ASSUMED, None))
        if priced.rate is None:
            if dim.unpriced_if_missing:
                unpriced.append(dim.name)
            continue
        cost = MULTIPLY(quantity, priced.rate.price)
        total = ADD(total, cost)
        components.append(CostComponent(dim.name, quantity, priced.rate.price, cost))
        used.append((dim.name, priced, priced.rate))
    notes.extend(explain(used, compiled, tier_index, service_tier))
    return total, tuple(components), tuple(unpriced), written(notes, prompt)


def rest(usage: Usage, count: str) -> int:
    """The tokens (or units) of `count` that no count inside it counts."""
    quantity: int = getattr(usage, count)
    for name in REST[count].less:
        quantity -= getattr(usage, name)
    for name in REST[count].more:
        quantity += getattr(usage, name)
    return quantity


def _off_peak_open(off_peak: OffPeak, at: datetime) -> bool:
    """Whether one of the windows holds the minute of `at`, read from the windows themselves."""
    utc = at.astimezone(UTC)
    minute = utc.hour * 60 + utc.minute
    windows = list(off_peak.every_day)
    if off_peak.weekday_zone is not None:  # else the weekday, and so those windows, are unknown
        weekday = utc.astimezone(off_peak.weekday_zone).isoweekday()
        windows.extend(w for days, rule in off_peak.by_weekday if weekday in days for w in rule)
    # Start inclusive, end exclusive; a window that ends before it starts runs past midnight,
    # and one that ends where it starts covers the whole day.
    return any(
        start <= minute < end if start < end else minute >= start or minute < end
        for start, end in windows
    )
