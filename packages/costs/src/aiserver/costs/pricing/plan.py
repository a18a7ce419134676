"""The fast path: pricing a call by a plan memoized per compiled entry, regime and usage mask.

A usage's mask has one bit per count that is not 0. With the regime (service tier, long-context
band, tiered_pricing range, off-peak window open), and for search calls the choice of a search
price, it keys a :class:`Plan`: the steps to run, one per dimension the usage can reach, each
with its count, the parts taken from it, its price in that regime; and the unpriced dimensions
and notes the quote will carry. Pricing a call is then a pass over the steps, and the checks of
:func:`validate_usage` happen on the way: a step whose quantity comes out negative has found a
negative count or parts larger than their total, and the call is refused with the error the
validation names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from itertools import compress
from operator import itemgetter
from typing import Any, Final, NoReturn

import msgspec

from aiserver.costs.pricing.dimensions import (
    DIMENSIONS,
    SERVICE_SUFFIX,
    SUFFIX_SERVICE,
    CostComponent,
    Dimension,
    PriceQuote,
    Quote,
    ServiceTier,
)
from aiserver.costs.pricing.entry import CompiledPrices, compile_entry
from aiserver.costs.pricing.exact import ADD, MULTIPLY, ZERO, exponent
from aiserver.costs.pricing.notes import QUERY_TIER_ASSUMED, Note, Used, explain, written
from aiserver.costs.pricing.regime import Priced, Resolver, query_tier, regime
from aiserver.costs.pricing.usage import (
    COUNT_FIELDS,
    MAX_QUANTITY,
    REST,
    SEARCH_CONTEXT_SIZES,
    Usage,
    check_call,
)

# --- Where the counts are --------------------------------------------------------------------
# Every position is found by name among Usage's fields, so that nothing depends on their order.

_ASTUPLE: Final = msgspec.structs.astuple
# The position of every usage field in astuple(usage).
_POSITION: Final[Mapping[str, int]] = {
    name: position for position, name in enumerate(Usage.__struct_fields__)
}
# One bit per count, by position; the fields that choose a price have none. A usage's mask has
# the bits of its counts that are not 0.
_BITS: Final = tuple(
    1 << position if name in COUNT_FIELDS else 0
    for position, name in enumerate(Usage.__struct_fields__)
)
_COUNTS: Final = itemgetter(*(_POSITION[name] for name in COUNT_FIELDS))
_INPUT: Final = _POSITION["input_tokens"]
_REQUESTS: Final = _POSITION["requests"]
_MAX_RESULTS: Final = _POSITION["max_results"]
_SEARCH_CONTEXT_SIZE: Final = _POSITION["search_context_size"]

# Every count starts exactly one dimension's quantity, so that each is checked by a step of its
# own, and so that when no quantity is negative no count is negative and no part is larger than
# its total: the rules validate_usage checks.
if sorted(dim.count_field for dim in DIMENSIONS) != sorted(COUNT_FIELDS):
    raise ValueError("the dimensions do not start from the counts of Usage, one each")
# A dimension without a price is left out of its plan only where that is free, which only
# requests is; quote checks the requests count itself, since its step may be missing.
if [dim.count_field for dim in DIMENSIONS if not dim.unpriced_if_missing] != ["requests"]:
    raise ValueError("only requests may be free without a price")


def _mask(*names: str) -> int:
    return sum(_BITS[_POSITION[name]] for name in names)


def _all_zero_test(names: frozenset[str]) -> tuple[Callable[[tuple[Any, ...]], object], object]:
    """A getter of the counts `names` from astuple(usage), and what it returns when all of them
    are 0. It reads them as runs of neighbours, a slice each, which compare at once."""
    runs: list[slice] = []
    for position in sorted(_POSITION[name] for name in names):
        if runs and runs[-1].stop == position:
            runs[-1] = slice(runs[-1].start, position + 1)
        else:
            runs.append(slice(position, position + 1))
    getter = itemgetter(*runs)
    return getter, getter((0,) * len(Usage.__struct_fields__))


# Counts whose price also depends on max_results or search_context_size.
_CHOOSING: Final = _mask("queries", "web_searches")

# Ordinary chat calls use only input and output tokens, which are always in the mask (their
# steps check them even when 0), and these parts, in the mask when they are not 0. Their mask is
# found without a pass over every count: the others are compared with zeros at once.
_CHAT_MASK: Final = _mask("input_tokens", "output_tokens")
_CHAT_PART_NAMES: Final = (
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "requests",
)
_CHAT_PARTS: Final = tuple((_POSITION[name], _BITS[_POSITION[name]]) for name in _CHAT_PART_NAMES)
# A plain chat call has every other count 0; an ordinary one every other count but its parts.
_OTHER_COUNTS: Final = frozenset(COUNT_FIELDS) - {"input_tokens", "output_tokens"}
_PLAIN_CHAT, _PLAIN_CHAT_ZEROS = _all_zero_test(_OTHER_COUNTS)
_UNUSUAL, _UNUSUAL_ZEROS = _all_zero_test(_OTHER_COUNTS - set(_CHAT_PART_NAMES))

# A compiled entry memoizes at most this many plans (about 3 kB each). A real workload needs a
# few dozen per model; a stream of unusual usages only costs the memo's reset, never unbounded
# memory.
_MAX_PLANS: Final = 64


# One dimension of a plan, as a plain tuple because the pricing loop unpacks it: its name, the
# position in astuple(usage) of the count its quantity starts from, the positions of the
# non-zero parts of that count that other dimensions price, the positions of the parts taken
# away twice, its price (None: no price in this regime) and its bit in the mask of steps whose
# quantity is 0.
_Step = tuple[str, int, tuple[int, ...], tuple[int, ...], Decimal | None, int]
# What a quote says besides its components: the unpriced dimensions, the notes (None when they
# name the prompt size, and are built from the note parts that follow) and the note parts.
_Annotation = tuple[tuple[str, ...], tuple[str, ...] | None, tuple[Note, ...]]


class Plan:
    """How to price the usages with one mask in one pricing regime: the steps to run and what
    the quote says besides. Built once per compiled entry, regime and mask."""

    __slots__ = (
        "annotation",
        "annotations",
        "compiled",
        "entries",
        "from_zero",
        "query_note",
        "service_tier",
        "steps",
        "tier",
    )

    def __init__(
        self,
        compiled: CompiledPrices,
        service_tier: str,
        tier: int,
        steps: tuple[_Step, ...],
        entries: tuple[tuple[Dimension, Priced], ...],
        query_note: bool,
    ) -> None:
        self.compiled = compiled
        self.service_tier = service_tier
        self.tier = tier  # the tiered_pricing range index, -1: none
        self.steps = steps
        self.entries = entries  # per step: the dimension and how it is priced
        self.query_note = query_note  # max_results was not given for a price by max_results
        # What the quote says, by the mask of the steps whose quantity is 0.
        self.annotations: dict[int, _Annotation] = {}
        self.annotation = self.annotate(0)  # when every step priced a quantity
        # A running total from 0 has the exponent min(0, the exponents of the costs) and is never
        # -0. Only a price with an exponent above 0, or -0, makes the plain sum of the costs
        # differ from it, and then the sum is added to 0 once.
        self.from_zero = any(
            price is not None and (price.is_signed() or exponent(price) > 0)
            for _, _, _, _, price, _ in steps
        )

    def annotate(self, zeros: int) -> _Annotation:
        """The unpriced dimensions and notes of a quote whose `zeros` steps priced nothing."""
        annotation = self.annotations.get(zeros)
        if annotation is not None:
            return annotation
        used: list[Used] = []
        unpriced: list[str] = []
        parts: list[Note] = []
        for (*_, bit), (dim, priced) in zip(self.steps, self.entries, strict=True):
            if zeros & bit:
                continue
            if priced.rate is not None:
                used.append((dim.name, priced, priced.rate))
            elif dim.unpriced_if_missing:
                unpriced.append(dim.name)
            if dim.name == "queries" and self.query_note:
                parts.append((QUERY_TIER_ASSUMED, None))
        parts.extend(explain(used, self.compiled, self.tier, self.service_tier))
        names_prompt = any(tail is not None for _, tail in parts)
        annotation = (
            tuple(unpriced),
            None if names_prompt else tuple(head for head, _ in parts),
            tuple(parts),
        )
        self.annotations[zeros] = annotation
        return annotation


def _plan(compiled: CompiledPrices, key: tuple[Any, ...]) -> Plan:
    """Build the plan for one regime and mask (see quote for the key); memoize it."""
    service, band, tier_index, off_peak_open, mask = key[:5]
    search_tier, default_max_results, search_context_size = (
        key[5] if len(key) > 5 else (-1, False, "medium")
    )
    if band == 0:
        prompt = -1
    else:
        threshold = compiled.thresholds[band - 1]
        prompt = threshold if compiled.inclusive_thresholds else threshold + 1
    resolver = Resolver(
        compiled,
        prompt,
        service,
        compiled.context_tiers[tier_index] if tier_index >= 0 else None,
        compiled.off_peak if off_peak_open else None,
    )
    steps: list[_Step] = []
    entries: list[tuple[Dimension, Priced]] = []
    for dim in DIMENSIONS:
        # Its quantity is the rest of its count: the parts that other dimensions price are
        # taken away, so that every token is priced exactly once.
        count = _POSITION[dim.count_field]
        rest = REST[dim.count_field]
        less = tuple(_POSITION[name] for name in rest.less)
        more = tuple(_POSITION[name] for name in rest.more)
        if not mask & (_BITS[count] | sum(_BITS[position] for position in (*less, *more))):
            continue  # every count it is made of is 0
        priced = resolver.priced(dim, search_tier, search_context_size)
        if priced.rate is None and not dim.unpriced_if_missing:
            continue  # free (no per-request fee); quote checks requests without a step
        steps.append(
            (
                dim.name,
                count,
                tuple(position for position in less if mask & _BITS[position]),
                tuple(position for position in more if mask & _BITS[position]),
                None if priced.rate is None else priced.rate.price,
                1 << len(steps),
            )
        )
        entries.append((dim, priced))
    plan = Plan(
        compiled,
        SUFFIX_SERVICE.get(service, "standard"),
        tier_index,
        tuple(steps),
        tuple(entries),
        query_note=bool(compiled.query_tiers) and bool(default_max_results),
    )
    # Benign races: two threads may both build the same plan (either result is the same), and a
    # reader of a memo being reset only misses it.
    if len(compiled.tables) >= _MAX_PLANS:
        compiled.tables.clear()
    compiled.tables[key] = plan
    return plan


def price_call(
    prices: CompiledPrices | Mapping[str, Any],
    usage: Usage,
    *,
    service_tier: ServiceTier = "standard",
    at: datetime,
) -> PriceQuote:
    """Price one call exactly.

    ``prices`` is an entry (compiled on the fly) or, faster, the result of
    :func:`compile_entry`. ``at`` is the time of the call and must be timezone-aware; it chooses
    the ``off_peak_pricing`` windows.

    ``requests`` (0 when omitted, like every count) is priced only by
    ``input_cost_per_request``; an entry without one has no per-request fee, so ``requests`` is
    never unpriced.

    Raises :class:`UsageError` for an invalid usage, and :class:`InvalidCall` for an unknown
    service tier or a naive ``at``. A count that equals 0 prices nothing and may go unchecked:
    ``0.0`` or ``False`` in its place prices as 0 here, though :func:`validate_usage` refuses it.
    """
    compiled = prices if isinstance(prices, CompiledPrices) else compile_entry(prices)
    return PriceQuote(*quote(compiled, usage, service_tier, at))


def quote(compiled: CompiledPrices, usage: Usage, service_tier: str, at: datetime) -> Quote:
    """`price_call` on a compiled entry, answered as a plain tuple (the calculator's path)."""
    values = _ASTUPLE(usage)
    # The mask of the counts that are not 0 chooses the plan, whose steps check those counts as
    # validate_usage does. A count that is 0 prices nothing and is not checked further.
    if _PLAIN_CHAT(values) == _PLAIN_CHAT_ZEROS:
        mask = _CHAT_MASK  # input and output tokens only
    elif _UNUSUAL(values) == _UNUSUAL_ZEROS:
        mask = _CHAT_MASK  # an ordinary chat call: its few parts one by one
        for position, bit in _CHAT_PARTS:
            if values[position] != 0:  # not just truthy: None must reach the step refusing it
                mask |= bit
    else:
        mask = _mask_of(values, usage, service_tier, at)
    requests = values[_REQUESTS]  # checked here: most plans have no step for it
    max_results = values[_MAX_RESULTS]
    service = SERVICE_SUFFIX.get(service_tier)
    zone = at.tzinfo
    if (
        type(requests) is not int
        or not 0 <= requests <= MAX_QUANTITY
        or (
            max_results is not None
            and (type(max_results) is not int or not 0 <= max_results <= MAX_QUANTITY)
        )
        or values[_SEARCH_CONTEXT_SIZE] not in SEARCH_CONTEXT_SIZES
        or service is None
        or zone is None
        or (zone is not UTC and at.utcoffset() is None)
    ):
        _refuse(usage, service_tier, at)

    prompt = values[_INPUT]  # which chooses the long-context prices
    total: Decimal | None = None
    components: list[CostComponent] = []
    zeros = 0
    try:
        # The plan's key: service suffix, long-context thresholds crossed, tiered_pricing range
        # index (-1: none), off-peak window open, mask [, choice of a search price].
        key: tuple[Any, ...]
        if compiled.thresholds or compiled.context_tiers or compiled.off_peak:
            key = (service, *regime(compiled, prompt, at), mask)
        else:
            key = (service, 0, -1, False, mask)
        if mask & _CHOOSING:
            choice = (
                query_tier(compiled, max_results),
                max_results is None,
                values[_SEARCH_CONTEXT_SIZE],
            )
            key = (*key, choice)
        plan: Plan = compiled.tables.get(key) or _plan(compiled, key)

        for name, count, less, more, price, bit in plan.steps:
            quantity = values[count]
            if type(quantity) is not int or quantity > MAX_QUANTITY:
                _refuse(usage, service_tier, at)
            if less:
                for position in less:
                    quantity -= values[position]
            if more:
                for position in more:
                    quantity += values[position]
            if quantity <= 0:
                if quantity:  # a negative count, or parts larger than their total
                    _refuse(usage, service_tier, at)
                zeros |= bit
                continue
            if price is None:
                continue
            cost = MULTIPLY(quantity, price)
            total = cost if total is None else ADD(total, cost)
            components.append(CostComponent(name, quantity, price, cost))
    except (TypeError, ArithmeticError):
        # A count that is no whole number, met before the step of its own count checked it:
        # input_tokens choosing the regime, or a part taken from its total.
        check_call(usage, service_tier, at)
        raise

    unpriced, notes, parts = plan.annotate(zeros) if zeros else plan.annotation
    if notes is None:
        notes = written(parts, prompt)
    if total is None:
        total = ZERO
    elif plan.from_zero:
        total = ADD(ZERO, total)
    return total, tuple(components), unpriced, notes


def _mask_of(values: tuple[Any, ...], usage: Usage, service_tier: str, at: datetime) -> int:
    """The mask of the counts that are not 0, in one pass over them all."""
    mask: int = sum(compress(_BITS, values))
    # Every count left out of the mask must be 0, not None or another false value.
    if _COUNTS(values).count(0) != len(COUNT_FIELDS) - mask.bit_count():
        _refuse(usage, service_tier, at)
    return mask


def _refuse(usage: Usage, service_tier: str, at: datetime) -> NoReturn:
    """Raise the error of a call that the fast checks of price_call found amiss."""
    check_call(usage, service_tier, at)
    raise AssertionError("price_call refused a call that validate_usage accepts")
