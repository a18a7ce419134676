"""The usage of one call: what it counts, which counts are parts of which totals, and which
usages are valid.

``input_tokens`` counts every prompt token and ``output_tokens`` every generated one; the other
token counts are parts of them (see :class:`Usage`). Every other count is of its own unit and
priced only by its own price. Validation refuses counts that are not whole, negative or too
large, and parts larger than their totals, naming the offending fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from operator import itemgetter
from typing import Final, Literal, NamedTuple

import msgspec

from aiserver.costs.errors import InvalidCall, UsageError
from aiserver.costs.pricing.dimensions import SERVICE_SUFFIX

SearchContextSize = Literal["low", "medium", "high"]

# The largest count we accept for one dimension of one call. It keeps every product far inside
# the exact-arithmetic context of .exact; no real call comes near it.
MAX_QUANTITY: Final = 10**15


class Usage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one call used. Omitted fields are 0. Parts never exceed their totals.

    Token parts of ``input_tokens``: ``cache_read_tokens``, ``cache_write_tokens``,
    ``input_audio_tokens``, ``input_image_tokens``, ``input_video_tokens``.
    ``cache_write_1h_tokens`` is the part of ``cache_write_tokens`` written with the 1-hour TTL.
    ``cache_read_audio_tokens`` and ``cache_read_image_tokens`` are the parts of
    ``cache_read_tokens`` of that modality; they are also counted in ``input_audio_tokens`` and
    ``input_image_tokens``.

    Token parts of ``output_tokens``: ``reasoning_tokens``, ``output_audio_tokens``,
    ``output_image_tokens``, ``output_video_tokens``.

    The other dimensions are counted in their own unit and priced only by their own price:
    ``images`` (generated), ``input_images`` (in the prompt), pixels, whole seconds (round them
    as the provider bills), characters, ``queries`` (search, rerank, embedding queries, with
    ``max_results`` choosing a tier where the entry prices by it), ``web_searches`` (priced by
    ``search_context_size``), ``maps_grounding_queries``, OCR ``pages`` and ``annotated_pages``,
    and ``requests`` (see the note on ``price_call``).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_audio_tokens: int = 0
    cache_read_image_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    input_video_tokens: int = 0
    output_video_tokens: int = 0
    images: int = 0  # images generated (output_cost_per_image)
    input_images: int = 0  # images in the prompt (input_cost_per_image)
    input_pixels: int = 0  # input_cost_per_pixel
    output_pixels: int = 0  # output_cost_per_pixel
    requests: int = 0  # input_cost_per_request; 0 when omitted, like every count
    seconds: int = 0  # time billed for the call itself (cost_per_second)
    input_seconds: int = 0  # length of the input, e.g. audio to transcribe (input_cost_per_second)
    output_seconds: int = 0  # length of generated audio or video (output_cost_per_second)
    input_audio_seconds: int = 0  # input_cost_per_audio_per_second
    input_video_seconds: int = 0  # input_cost_per_video_per_second
    output_video_seconds: int = 0  # output_cost_per_video_per_second
    input_characters: int = 0  # input_cost_per_character
    output_characters: int = 0  # output_cost_per_character
    queries: int = 0  # search, rerank or embedding queries (input_cost_per_query)
    web_searches: int = 0  # web search tool calls (search_context_cost_per_query)
    maps_grounding_queries: int = 0  # google_maps_grounding_cost_per_query
    pages: int = 0  # OCR pages (ocr_cost_per_page)
    annotated_pages: int = 0  # annotation_cost_per_page
    # Not counts: these two choose a price (CHOICE_FIELDS).
    max_results: int | None = None  # results per query, for entries priced by it; None: 10
    search_context_size: SearchContextSize = "medium"


# Not counts: these choose a price. Every other field of Usage is a count.
CHOICE_FIELDS: Final = ("max_results", "search_context_size")
COUNT_FIELDS: Final[tuple[str, ...]] = tuple(
    name for name in Usage.__struct_fields__ if name not in CHOICE_FIELDS
)
SEARCH_CONTEXT_SIZES: Final = frozenset(("low", "medium", "high"))

# Which counts are parts of which totals: each total, with the counts inside it. This is the one
# statement of it: validation and both pricers derive what they need from it (REST below).
# cache_read_audio_tokens and cache_read_image_tokens are inside two totals at once, their
# modality count and cache_read_tokens, the way OpenAI and Gemini report them. Validation checks
# the totals in this order, each after the totals among its parts.
PARTS: Final[Mapping[str, tuple[str, ...]]] = {
    "cache_write_tokens": ("cache_write_1h_tokens",),  # the rest is written for 5 minutes
    "input_audio_tokens": ("cache_read_audio_tokens",),
    "input_image_tokens": ("cache_read_image_tokens",),
    "cache_read_tokens": ("cache_read_audio_tokens", "cache_read_image_tokens"),
    "input_tokens": (
        "cache_read_tokens",
        "cache_write_tokens",
        "input_audio_tokens",
        "input_image_tokens",
        "input_video_tokens",
    ),
    "output_tokens": (
        "reasoning_tokens",
        "output_audio_tokens",
        "output_image_tokens",
        "output_video_tokens",
    ),
}


class Rest(NamedTuple):
    """The tokens of a count that no count inside it counts: the count, less the counts in
    `less`, plus those in `more` (counted inside two of its parts, so taken away twice)."""

    less: tuple[str, ...]
    more: tuple[str, ...]


def _inside(total: str, outer: tuple[str, ...] = ()) -> list[str]:
    """Every count inside `total`, at any depth, once each, parts before their own parts."""
    if total in outer:
        raise ValueError(f"PARTS puts {total} inside itself")
    found: list[str] = []
    for part in PARTS.get(total, ()):
        for count in (part, *_inside(part, (*outer, total))):
            if count not in found:
                found.append(count)
    return found


def _rest_terms(count: str) -> dict[str, int]:
    """The rest of `count` as a sum of counts: the count less the rest of every count inside it,
    so that the rests of a total and of everything inside it add up to the total."""
    terms = {count: 1}
    for inner in _inside(count):
        for name, times in _rest_terms(inner).items():
            terms[name] = terms.get(name, 0) - times
    return {name: times for name, times in terms.items() if times}


def _rest(count: str) -> Rest:
    terms = _rest_terms(count)
    # A count inside three parts of one total would be added back twice; no usage has one.
    odd = [name for name, times in terms.items() if times not in (-1, 1)]
    if odd:
        raise ValueError(f"PARTS puts {', '.join(odd)} inside more than two parts of {count}")
    return Rest(
        less=tuple(name for name, times in terms.items() if times == -1),
        more=tuple(name for name, times in terms.items() if times == 1 and name != count),
    )


_UNKNOWN: Final = {name for total, parts in PARTS.items() for name in (total, *parts)} - set(
    COUNT_FIELDS
)
if _UNKNOWN:
    raise ValueError(f"PARTS names fields that are no counts of Usage: {sorted(_UNKNOWN)}")
# The rest of every count: what the dimension of that count prices.
REST: Final[Mapping[str, Rest]] = {count: _rest(count) for count in COUNT_FIELDS}


_POSITION: Final = {name: index for index, name in enumerate(Usage.__struct_fields__)}
_COUNT_VALUES: Final = itemgetter(*(_POSITION[name] for name in COUNT_FIELDS))
# For each total: its position, and the positions its rest takes away and adds back.
_PART_POSITIONS: Final = tuple(
    (
        _POSITION[total],
        tuple(_POSITION[name] for name in REST[total].less),
        tuple(_POSITION[name] for name in REST[total].more),
    )
    for total in PARTS
)
_INT: Final = {int}


def usage_is_valid(usage: Usage) -> bool:
    """Whether :func:`validate_usage` accepts ``usage``, answered fast: the check of a usage
    that is most likely valid (one read from a provider, or decoded), which then calls
    validate_usage only to say what is wrong."""
    values = msgspec.structs.astuple(usage)
    counts = _COUNT_VALUES(values)
    if set(map(type, counts)) != _INT or min(counts) < 0 or max(counts) > MAX_QUANTITY:
        return False
    for total, less, more in _PART_POSITIONS:
        taken = 0
        for position in less:
            taken += values[position]
        for position in more:
            taken -= values[position]
        if taken > values[total]:
            return False
    max_results = usage.max_results
    return (
        max_results is None or (type(max_results) is int and 0 <= max_results <= MAX_QUANTITY)
    ) and usage.search_context_size in SEARCH_CONTEXT_SIZES


def validate_usage(usage: Usage) -> None:
    """Raise :class:`UsageError` for counts that are not whole, negative or too large, and for
    parts larger than their totals. The message and ``fields`` name the offending fields."""
    for name in COUNT_FIELDS:
        value = getattr(usage, name)
        if type(value) is not int or value < 0 or value > MAX_QUANTITY:
            _reject_counts(usage)
    max_results = usage.max_results
    if max_results is not None and (
        type(max_results) is not int or not 0 <= max_results <= MAX_QUANTITY
    ):
        raise UsageError("max_results must be a whole number from 0", ("max_results",))
    if usage.search_context_size not in SEARCH_CONTEXT_SIZES:
        raise UsageError(
            "search_context_size must be one of low, medium, high", ("search_context_size",)
        )
    for total in PARTS:
        _check_parts(usage, total)


def _reject_counts(usage: Usage) -> None:
    values = {name: getattr(usage, name) for name in COUNT_FIELDS}
    wrong_type = tuple(name for name, value in values.items() if type(value) is not int)
    if wrong_type:
        raise UsageError(f"must be whole numbers: {', '.join(wrong_type)}", wrong_type)
    negative = tuple(name for name, value in values.items() if value < 0)
    if negative:
        raise UsageError(f"must not be negative: {', '.join(negative)}", negative)
    too_large = tuple(name for name, value in values.items() if value > MAX_QUANTITY)
    raise UsageError(f"larger than {MAX_QUANTITY}: {', '.join(too_large)}", too_large)


def _check_parts(usage: Usage, total: str) -> None:
    """Refuse parts that count more tokens than their total: a negative rest."""
    rest = REST[total]
    used = tuple(part for part in rest.less if getattr(usage, part))
    taken = tuple(part for part in rest.more if getattr(usage, part))
    amount = sum(getattr(usage, part) for part in used) - sum(
        getattr(usage, part) for part in taken
    )
    if amount > getattr(usage, total):
        # "a (N) is larger than total (M)", or "a + b - c (N) is larger than total (M)" where
        # c is counted inside both a and b
        expression = " + ".join(used) + "".join(f" - {part}" for part in taken)
        raise UsageError(
            f"{expression} ({amount}) is larger than {total} ({getattr(usage, total)})",
            (*used, *taken, total),
        )


def check_call(usage: Usage, service_tier: str, at: datetime) -> None:
    """Every check of a call, one by one, each raising the error that names what is wrong."""
    validate_usage(usage)
    if service_tier not in SERVICE_SUFFIX:
        raise InvalidCall(
            f"unknown service tier {service_tier!r}; use one of standard, batch, priority, flex"
        )
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidCall("at must be timezone-aware")
    check_in_utc(at)


def check_in_utc(at: datetime) -> None:
    """Refuse a time (timezone-aware) that has no UTC date: one within a day of year 1 or year
    9999 whose offset carries it past them (``0001-01-01T00:00:00+01:00``). The off-peak
    windows and the stored events need the time in UTC, and converting it would overflow."""
    try:
        at.astimezone(UTC)
    except OverflowError:
        raise InvalidCall(
            f"at {at.isoformat()} is out of range: in UTC it is before year 1 or after year 9999"
        ) from None
