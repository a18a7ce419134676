"""The notes of a quote: which prices were used where the obvious one was not.

A note is a fallback to another dimension's price, a derived price, a tiered_pricing range or
long-context prices applied (and dimensions left at a lower tier), off-peak prices, or a service
tier without prices of its own. Notes that name the prompt size are kept in two halves, so that
the fast path can build them once per plan and put each call's prompt between the halves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from aiserver.costs.pricing.dimensions import BY_NAME, SERVICE_SUFFIX
from aiserver.costs.pricing.entry import CompiledPrices
from aiserver.costs.pricing.regime import Priced, Rate

# A note, or the two halves of a note that names the prompt size between them.
Note = tuple[str, str | None]
# The note of a search call priced by max_results without one.
QUERY_TIER_ASSUMED: Final = "max_results not given; 10 assumed for the query price tier"
# A dimension that priced a quantity: its name, how it was priced and the rate used.
Used = tuple[str, Priced, Rate]


def explain(
    used: Sequence[Used],
    compiled: CompiledPrices,
    tier_index: int,
    service_tier: str,
) -> list[Note]:
    """Notes that say which prices were used where the obvious one was not."""
    notes: list[Note] = []
    for name, priced, _ in used:
        if priced.derived is not None:
            notes.append((priced.derived, None))
        elif priced.fallback is not None:
            notes.append((f"no {name} price; {priced.fallback} price used", None))
    if tier_index >= 0 and any(rate.source == "tier" for _, _, rate in used):
        label = compiled.context_tiers[tier_index].label
        notes.append((f"tiered_pricing range {label} applied for ", " input tokens"))
    _long_context_notes(used, compiled, notes)
    if any(rate.source == "off_peak" for _, _, rate in used):
        notes.append(("off-peak prices applied", None))
    off_peak = compiled.off_peak
    if off_peak is not None and off_peak.weekday_zone is None and off_peak.by_weekday:
        notes.append(("off-peak windows by weekday ignored: unknown weekday_timezone", None))
    standard = [
        name for name, priced, rate in used if rate.standard_for_tier and priced.fallback is None
    ]
    if standard:
        service = SERVICE_SUFFIX[service_tier]
        subject = "this model" if service not in compiled.services else ", ".join(standard)
        notes.append(
            (
                f"service tier {service_tier!r} has no prices for {subject}; standard prices used",
                None,
            )
        )
    return notes


def written(notes: Sequence[Note], prompt: int) -> tuple[str, ...]:
    """The notes as a quote says them, the prompt size between the halves of those that name it."""
    return tuple([head if tail is None else f"{head}{prompt}{tail}" for head, tail in notes])


def _long_context_notes(used: Sequence[Used], compiled: CompiledPrices, notes: list[Note]) -> None:
    thresholds = [rate.threshold for _, _, rate in used if rate.threshold is not None]
    comparison = ">=" if compiled.inclusive_thresholds else ">"
    if not thresholds:
        passed = [(name, rate.passed) for name, _, rate in used if rate.passed is not None]
        if passed:  # batch above a threshold, without batch long-context prices
            highest = max(threshold for _, threshold in passed)
            notes.append(
                (
                    f"no batch price above {_tokens_label(highest)} tokens for "
                    f"{', '.join(name for name, _ in passed)}; batch prices below it used, as "
                    "LiteLLM bills batch (input_tokens ",
                    f" {comparison} {highest})",
                )
            )
        return
    highest = max(thresholds)
    notes.append(
        (
            f"long-context prices above {_tokens_label(highest)} tokens applied (input_tokens ",
            f" {comparison} {highest})",
        )
    )
    behind = [
        name
        for name, priced, rate in used
        if BY_NAME[name].tokens
        and priced.fallback is None
        and rate.source == "entry"
        and (rate.threshold is None or rate.threshold < highest)
    ]
    if behind:
        notes.append(
            (
                f"no long-context price above {_tokens_label(highest)} tokens for "
                f"{', '.join(behind)}; lower-tier prices used",
                None,
            )
        )


def _tokens_label(threshold: int) -> str:
    return f"{threshold // 1000}k" if threshold % 1000 == 0 else str(threshold)
