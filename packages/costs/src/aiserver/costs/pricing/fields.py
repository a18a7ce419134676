"""The grammar of an entry's price fields: which top-level fields bear on price, and which of
them the calculator prices.

A plain price field is ``<base>[_above_<N>[k]_tokens][_batches|_priority|_flex]``, where
``<base>`` is the price field of one dimension (see :mod:`.dimensions`). Three fields are
structured (``tiered_pricing``, ``off_peak_pricing``, ``search_context_cost_per_query``) and
compiled by their own rules. :func:`is_price_field` and :func:`is_understood_field` are the
one definition of both questions: the overrides API and the CLI ask them too.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from aiserver.costs.pricing.dimensions import DIMENSIONS, SUFFIX_SERVICE

# Longest first, so that ``cache_creation_input_token_cost_above_1hr`` is not read as a
# threshold of ``cache_creation_input_token_cost``.
_BASE_FIELDS: Final[tuple[str, ...]] = tuple(
    sorted(
        {dim.field for dim in DIMENSIONS if dim.field != "search_context_cost_per_query"},
        key=len,
        reverse=True,
    )
)
CACHE_READ_FIELD: Final = "cache_read_input_token_cost"
# DeepSeek entries repeat cache_read_input_token_cost under this name; it is used only when the
# entry lacks cache_read_input_token_cost, or when an override sets it and not the other.
CACHE_HIT_ALIAS: Final = "input_cost_per_token_cache_hit"
STRUCTURED_FIELDS: Final = frozenset(
    ("tiered_pricing", "off_peak_pricing", "search_context_cost_per_query")
)

# In a tiered_pricing tier these fields belong to the tier: a tier without them falls back along
# the dimension's fallback (cache reads to the tier's input price, reasoning to the tier's output
# price) rather than to a flat price of the entry, so that one request never mixes tiers.
TIER_OWNED: Final = frozenset(
    (
        "cache_read_input_token_cost",
        "cache_creation_input_token_cost",
        "cache_creation_input_token_cost_above_1hr",
        "output_cost_per_reasoning_token",
    )
)
TIER_FIELDS: Final = frozenset(("input_cost_per_token", "output_cost_per_token", *TIER_OWNED))
OFF_PEAK_FIELDS: Final = frozenset(
    (
        "input_cost_per_token",
        "output_cost_per_token",
        "cache_read_input_token_cost",
        "cache_creation_input_token_cost",
        "output_cost_per_reasoning_token",
    )
)


class FieldName(NamedTuple):
    base: str
    threshold: int | None  # prompt tokens the price applies above
    service: str  # "" for standard, else the suffix word


def parse_field(name: str) -> FieldName | None:
    """The parts of a plain price field's name, or None for a field this calculator ignores."""
    if name == CACHE_HIT_ALIAS:
        return FieldName(CACHE_HIT_ALIAS, None, "")
    for base in _BASE_FIELDS:
        if name == base:
            return FieldName(base, None, "")
        if name.startswith(base) and name[len(base)] == "_":
            return _parse_rest(base, name[len(base) :])
    return None


def _parse_rest(base: str, rest: str) -> FieldName | None:
    threshold: int | None = None
    if rest.startswith("_above_"):
        body = rest[len("_above_") :]
        end = body.find("_tokens")
        if end <= 0:
            return None
        number = body[:end]
        scale = 1
        if number.endswith("k"):
            number, scale = number[:-1], 1000
        if not number.isdigit() or not number.isascii():
            return None
        threshold = int(number) * scale
        rest = body[end + len("_tokens") :]
    if not rest:
        return FieldName(base, threshold, "")
    service = rest[1:]
    if rest[0] != "_" or service not in SUFFIX_SERVICE:
        return None
    return FieldName(base, threshold, service)


def is_price_field(name: str) -> bool:
    """Whether a top-level field of an entry bears on price (as opposed to limits or features)."""
    return (
        "cost" in name
        or "pricing" in name
        or "multiplier" in name
        or name in ("search_free_requests", "web_search_billing_unit")
    )


def is_understood_field(name: str) -> bool:
    """Whether :func:`price_call` prices this top-level price field of an entry.

    Every field that :func:`is_price_field` accepts and this returns False for is ignored by the
    calculator, for example other service tiers (``_ultrafast``), regional uplift multipliers,
    resolution-specific prices (``output_cost_per_second_720p``) and 12-hour cache writes.
    """
    return name in STRUCTURED_FIELDS or parse_field(name) is not None
