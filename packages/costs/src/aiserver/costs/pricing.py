"""Exact price of one model call, from one price entry in LiteLLM's price-map format.

The entry is one value of LiteLLM's ``model_prices_and_context_window.json``, decoded with
``msgspec.json.Decoder(float_hook=decimal.Decimal)``: prices are ``Decimal`` (or ``int``), never
``float``. Everything here is pure: no I/O, no clock, no database. A catalog compiles each
entry once with :func:`compile_entry` and prices calls with :func:`price_call`.

Usage semantics (DESIGN.md, "Usage semantics"):

- ``input_tokens`` counts every prompt token. Its parts are priced at their own rates when the
  entry has them: cache reads, cache writes (5-minute and 1-hour), audio, image and video tokens.
  Whatever is left is text, priced at the input rate.
- ``output_tokens`` counts every generated token. Its parts are reasoning, audio, image and video
  tokens; whatever is left is text, priced at the output rate.
- The modality counts (``input_audio_tokens``, ``input_image_tokens``) include the tokens of that
  modality read from cache, which ``cache_read_audio_tokens`` and ``cache_read_image_tokens`` name,
  the way OpenAI and Gemini report them. Cache writes are not counted again in a modality count.
- Long-context prices (``*_above_<N>k_tokens`` and ``tiered_pricing`` ranges) apply to the whole
  request once ``input_tokens`` passes the threshold, as the providers bill.
- A service tier picks the ``_batches``, ``_priority`` or ``_flex`` price where the entry has one;
  where it does not, the standard price is used and the quote says so in ``notes``.
- ``off_peak_pricing`` windows are chosen by the time of the call, ``at``.
- A dimension with a non-zero quantity and no price is listed in ``unpriced``, never priced $0.
  A price of 0 in the entry is a real price.

Money is exact: every cost is ``quantity * unit_price`` in ``Decimal`` with no rounding, and the
total is the exact sum of the components.
"""

from __future__ import annotations

import bisect
import decimal
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from itertools import compress
from typing import Any, Final, Literal, NamedTuple, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from aiserver.costs.errors import InvalidCall, UsageError

__all__ = [
    "MAX_QUANTITY",
    "CompiledPrices",
    "CostComponent",
    "PriceQuote",
    "SearchContextSize",
    "ServiceTier",
    "Usage",
    "UsageError",
    "compile_entry",
    "is_price_field",
    "is_understood_field",
    "price_call",
    "validate_usage",
]

ServiceTier = Literal["standard", "batch", "priority", "flex"]
SearchContextSize = Literal["low", "medium", "high"]

# The largest count we accept for one dimension of one call. It keeps every product far inside
# the exact-arithmetic context below; no real call comes near it.
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
    # Not counts: these two choose a price and must stay last (validation relies on it).
    max_results: int | None = None  # results per query, for entries priced by it; None: 10
    search_context_size: SearchContextSize = "medium"


class CostComponent(msgspec.Struct, frozen=True):
    """One priced dimension: ``cost == quantity * unit_price``, exactly."""

    name: str
    quantity: int
    unit_price: Decimal
    cost: Decimal


class PriceQuote(msgspec.Struct, frozen=True):
    """The price of one call. ``total`` is the exact sum of the component costs."""

    total: Decimal
    components: tuple[CostComponent, ...]
    unpriced: tuple[str, ...]
    notes: tuple[str, ...]


# Every field but the last two is a count; validation reads them in one pass.
_COUNT_FIELDS: Final[tuple[str, ...]] = Usage.__struct_fields__[:-2]
assert Usage.__struct_fields__[-2:] == ("max_results", "search_context_size")
_SEARCH_CONTEXT_SIZES: Final = frozenset(("low", "medium", "high"))


def validate_usage(usage: Usage) -> None:
    """Raise :class:`UsageError` for counts that are not whole, negative or too large, and for
    parts larger than their totals. The message and ``fields`` name the offending fields."""
    for value in msgspec.structs.astuple(usage)[: len(_COUNT_FIELDS)]:
        if type(value) is not int or value < 0 or value > MAX_QUANTITY:
            _reject_counts(usage)
    max_results = usage.max_results
    if max_results is not None and (
        type(max_results) is not int or not 0 <= max_results <= MAX_QUANTITY
    ):
        raise UsageError("max_results must be a whole number from 0", ("max_results",))
    if usage.search_context_size not in _SEARCH_CONTEXT_SIZES:
        raise UsageError(
            "search_context_size must be one of low, medium, high", ("search_context_size",)
        )
    u = usage
    if (
        u.cache_write_1h_tokens > u.cache_write_tokens
        or u.cache_read_audio_tokens > u.input_audio_tokens
        or u.cache_read_image_tokens > u.input_image_tokens
        or u.cache_read_audio_tokens + u.cache_read_image_tokens > u.cache_read_tokens
        or u.cache_read_tokens
        + u.cache_write_tokens
        + u.input_audio_tokens
        - u.cache_read_audio_tokens
        + u.input_image_tokens
        - u.cache_read_image_tokens
        + u.input_video_tokens
        > u.input_tokens
        or u.reasoning_tokens
        + u.output_audio_tokens
        + u.output_image_tokens
        + u.output_video_tokens
        > u.output_tokens
    ):
        _reject_parts(usage)


def _reject_counts(usage: Usage) -> None:
    values = {name: getattr(usage, name) for name in _COUNT_FIELDS}
    wrong_type = tuple(name for name, value in values.items() if type(value) is not int)
    if wrong_type:
        raise UsageError(f"must be whole numbers: {', '.join(wrong_type)}", wrong_type)
    negative = tuple(name for name, value in values.items() if value < 0)
    if negative:
        raise UsageError(f"must not be negative: {', '.join(negative)}", negative)
    too_large = tuple(name for name, value in values.items() if value > MAX_QUANTITY)
    raise UsageError(f"larger than {MAX_QUANTITY}: {', '.join(too_large)}", too_large)


def _reject_parts(usage: Usage) -> None:
    _check_part(usage, "cache_write_1h_tokens", "cache_write_tokens")
    _check_part(usage, "cache_read_audio_tokens", "input_audio_tokens")
    _check_part(usage, "cache_read_image_tokens", "input_image_tokens")
    _check_parts(usage, ("cache_read_audio_tokens", "cache_read_image_tokens"), "cache_read_tokens")
    _check_parts(
        usage,
        (
            "cache_read_tokens",
            "cache_write_tokens",
            "input_audio_tokens",
            "input_image_tokens",
            "input_video_tokens",
        ),
        "input_tokens",
        # Cached audio and image tokens are counted both in cache_read_tokens and in their
        # modality count; they are taken away once so that the parts do not overlap.
        overlap=("cache_read_audio_tokens", "cache_read_image_tokens"),
    )
    _check_parts(
        usage,
        ("reasoning_tokens", "output_audio_tokens", "output_image_tokens", "output_video_tokens"),
        "output_tokens",
    )


def _check_part(usage: Usage, part: str, total: str) -> None:
    if getattr(usage, part) > getattr(usage, total):
        raise UsageError(
            f"{part} ({getattr(usage, part)}) is larger than {total} ({getattr(usage, total)})",
            (part, total),
        )


def _check_parts(
    usage: Usage, parts: tuple[str, ...], total: str, overlap: tuple[str, ...] = ()
) -> None:
    used = tuple(part for part in parts if getattr(usage, part))
    taken = tuple(part for part in overlap if getattr(usage, part))
    amount = sum(getattr(usage, part) for part in used) - sum(
        getattr(usage, part) for part in taken
    )
    if amount > getattr(usage, total):
        if len(used) == 1 and not taken:
            _check_part(usage, used[0], total)
        expression = " + ".join(used) + "".join(f" - {part}" for part in taken)
        raise UsageError(
            f"{expression} ({amount}) is larger than {total} ({getattr(usage, total)})",
            (*used, *taken, total),
        )


# --- The price fields this calculator understands -------------------------------------------

_SERVICE_SUFFIX: Final[Mapping[str, str]] = {
    "standard": "",
    "batch": "batches",
    "priority": "priority",
    "flex": "flex",
}
_SUFFIX_SERVICE: Final[Mapping[str, str]] = {
    suffix: tier for tier, suffix in _SERVICE_SUFFIX.items() if suffix
}


class _Dimension(NamedTuple):
    name: str  # component name, stable: others rely on it
    field: str  # the base price field of the entry
    fallback: str | None  # the dimension whose price applies when the entry has none of its own
    tokens: bool  # a token part of input_tokens or output_tokens (long-context notes)
    unpriced_if_missing: bool = True


# Components are reported in this order.
_DIMENSIONS: Final[tuple[_Dimension, ...]] = (
    _Dimension("input", "input_cost_per_token", None, True),
    _Dimension("cache_read", "cache_read_input_token_cost", "input", True),
    _Dimension("cache_read_audio", "cache_read_input_audio_token_cost", "cache_read", True),
    _Dimension("cache_read_image", "cache_read_input_image_token_cost", "cache_read", True),
    _Dimension("cache_write", "cache_creation_input_token_cost", "input", True),
    _Dimension("cache_write_1h", "cache_creation_input_token_cost_above_1hr", "cache_write", True),
    _Dimension("input_audio", "input_cost_per_audio_token", "input", True),
    _Dimension("input_image", "input_cost_per_image_token", "input", True),
    _Dimension("input_video", "input_cost_per_video_token", "input", True),
    _Dimension("output", "output_cost_per_token", None, True),
    _Dimension("reasoning", "output_cost_per_reasoning_token", "output", True),
    _Dimension("output_audio", "output_cost_per_audio_token", "output", True),
    _Dimension("output_image", "output_cost_per_image_token", "output", True),
    _Dimension("output_video", "output_cost_per_video_token", "output", True),
    _Dimension("images", "output_cost_per_image", None, False),
    _Dimension("input_images", "input_cost_per_image", None, False),
    _Dimension("input_pixels", "input_cost_per_pixel", None, False),
    _Dimension("output_pixels", "output_cost_per_pixel", None, False),
    # A model without a per-request fee charges nothing per request: ``requests`` (1 in
    # DESIGN.md's example request) is no unpriced dimension when the entry has no
    # input_cost_per_request.
    _Dimension("requests", "input_cost_per_request", None, False, unpriced_if_missing=False),
    _Dimension("seconds", "cost_per_second", None, False),
    _Dimension("input_seconds", "input_cost_per_second", None, False),
    _Dimension("output_seconds", "output_cost_per_second", None, False),
    _Dimension("input_audio_seconds", "input_cost_per_audio_per_second", None, False),
    _Dimension("input_video_seconds", "input_cost_per_video_per_second", None, False),
    _Dimension("output_video_seconds", "output_cost_per_video_per_second", None, False),
    _Dimension("input_characters", "input_cost_per_character", None, False),
    _Dimension("output_characters", "output_cost_per_character", None, False),
    _Dimension("queries", "input_cost_per_query", None, False),
    _Dimension("web_searches", "search_context_cost_per_query", None, False),
    _Dimension("maps_grounding_queries", "google_maps_grounding_cost_per_query", None, False),
    _Dimension("pages", "ocr_cost_per_page", None, False),
    _Dimension("annotated_pages", "annotation_cost_per_page", None, False),
)
_BY_NAME: Final[Mapping[str, _Dimension]] = {dim.name: dim for dim in _DIMENSIONS}

# Plain price fields: ``<base>[_above_<N>[k]_tokens][_batches|_priority|_flex]``.
# Longest first, so that ``cache_creation_input_token_cost_above_1hr`` is not read as a
# threshold of ``cache_creation_input_token_cost``.
_BASE_FIELDS: Final[tuple[str, ...]] = tuple(
    sorted(
        {dim.field for dim in _DIMENSIONS if dim.field != "search_context_cost_per_query"},
        key=len,
        reverse=True,
    )
)
# DeepSeek entries repeat cache_read_input_token_cost under this name; it is used only when the
# entry lacks cache_read_input_token_cost.
_CACHE_HIT_ALIAS: Final = "input_cost_per_token_cache_hit"
_STRUCTURED_FIELDS: Final = frozenset(
    ("tiered_pricing", "off_peak_pricing", "search_context_cost_per_query")
)

# In a tiered_pricing tier these fields belong to the tier: a tier without them falls back along
# the dimension's fallback (cache reads to the tier's input price, reasoning to the tier's output
# price) rather than to a flat price of the entry, so that one request never mixes tiers.
_TIER_OWNED: Final = frozenset(
    (
        "cache_read_input_token_cost",
        "cache_creation_input_token_cost",
        "cache_creation_input_token_cost_above_1hr",
        "output_cost_per_reasoning_token",
    )
)
_TIER_FIELDS: Final = frozenset(
    (
        "input_cost_per_token",
        "output_cost_per_token",
        *_TIER_OWNED,
    )
)
_OFF_PEAK_FIELDS: Final = frozenset(
    (
        "input_cost_per_token",
        "output_cost_per_token",
        "cache_read_input_token_cost",
        "cache_creation_input_token_cost",
        "output_cost_per_reasoning_token",
    )
)


class _FieldName(NamedTuple):
    base: str
    threshold: int | None  # prompt tokens the price applies above
    service: str  # "" for standard, else the suffix word


def _parse_field(name: str) -> _FieldName | None:
    if name == _CACHE_HIT_ALIAS:
        return _FieldName(_CACHE_HIT_ALIAS, None, "")
    for base in _BASE_FIELDS:
        if name == base:
            return _FieldName(base, None, "")
        if name.startswith(base) and name[len(base)] == "_":
            return _parse_rest(base, name[len(base) :])
    return None


def _parse_rest(base: str, rest: str) -> _FieldName | None:
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
        return _FieldName(base, threshold, "")
    service = rest[1:]
    if rest[0] != "_" or service not in _SUFFIX_SERVICE:
        return None
    return _FieldName(base, threshold, service)


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
    return name in _STRUCTURED_FIELDS or _parse_field(name) is not None


# --- Compiling an entry ---------------------------------------------------------------------


class _FieldPrices(msgspec.Struct, frozen=True):
    flat: dict[str, Decimal]  # service suffix ("" standard) -> price
    # (threshold, service suffix -> price), highest threshold first
    above: tuple[tuple[int, dict[str, Decimal]], ...]


class _ContextTier(msgspec.Struct, frozen=True):
    start: Decimal
    end: Decimal
    prices: dict[str, Decimal]
    label: str


class _QueryTier(msgspec.Struct, frozen=True):
    low: Decimal
    high: Decimal
    price: Decimal


class _OffPeak(msgspec.Struct, frozen=True):
    prices: dict[str, Decimal]
    every_day: tuple[tuple[int, int], ...]  # (start, end) minutes of the UTC day
    by_weekday: tuple[tuple[frozenset[int], tuple[tuple[int, int], ...]], ...]
    weekday_zone: tzinfo | None  # None: the zone is unknown, so the windows cannot be decided
    # The windows as one flag per minute: of the UTC day for every_day, and of the week (by ISO
    # weekday on the entry's calendar, then UTC minute) for every_day and by_weekday together.
    day: bytes
    week: bytes


class CompiledPrices(msgspec.Struct, frozen=True, eq=False):
    """One entry, parsed once for fast repeated pricing. Treat it as immutable.

    Compared by identity: its memo of pricing plans grows as it prices calls.
    """

    fields: dict[str, _FieldPrices]
    inclusive_thresholds: bool
    context_tiers: tuple[_ContextTier, ...]
    query_tiers: tuple[_QueryTier, ...]
    off_peak: _OffPeak | None
    search_context: dict[str, Decimal]
    ignored_fields: tuple[str, ...]  # price fields present and not understood
    invalid_fields: tuple[str, ...]  # understood fields whose value is not a usable price
    provider: str | None
    default_cache_read_ratio: Decimal | None  # of the input price, when no cache_read price
    thresholds: tuple[int, ...]  # every long-context threshold of the entry, ascending
    services: frozenset[str]  # the service tier suffixes the entry has any price for
    # Pricing plans per regime and usage mask, filled on first use. The only mutable part; it
    # holds values derived from the fields above, so a CompiledPrices still behaves as immutable.
    tables: dict[tuple[Any, ...], _Plan]


# LiteLLM bills xAI's long-context prices once the prompt reaches the threshold (>=), following
# xAI's published billing; every other provider bills above it (>).
_INCLUSIVE_THRESHOLD_PROVIDERS: Final = frozenset(("xai",))

# Fireworks bills cached prompt tokens at half the input price unless a model says otherwise.
# LiteLLM applies the same default (FIREWORKS_AI_DEFAULT_CACHE_READ_RATE_RATIO).
_DEFAULT_CACHE_READ_RATIO: Final[Mapping[str, Decimal]] = {"fireworks_ai": Decimal("0.5")}

# Zones with a fixed UTC offset, for hosts without a time zone database.
_FIXED_ZONES: Final[Mapping[str, int]] = {
    "UTC": 0,
    "Etc/UTC": 0,
    "Asia/Shanghai": 8,
    "Asia/Hong_Kong": 8,
    "Asia/Singapore": 8,
    "Asia/Taipei": 8,
    "Asia/Tokyo": 9,
    "Asia/Seoul": 9,
}


def _price(value: object) -> Decimal | None:
    """A usable price, or None. A float is a programming error: money is never a float."""
    if isinstance(value, float):
        raise TypeError("prices must be Decimal or int; decode with float_hook=decimal.Decimal")
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        return None
    price = Decimal(value)
    if not price.is_finite() or price < 0:
        return None
    return price


def compile_entry(entry: Mapping[str, Any]) -> CompiledPrices:
    """Parse the price fields of one entry once; price calls with :func:`price_call`."""
    flat: dict[str, dict[str, Decimal]] = {}
    above: dict[str, dict[int, dict[str, Decimal]]] = {}
    ignored: list[str] = []
    invalid: list[str] = []
    for name, value in entry.items():
        if name in _STRUCTURED_FIELDS or value is None:
            continue
        parsed = _parse_field(name)
        if parsed is None:
            if is_price_field(name):
                ignored.append(name)
            continue
        price = _price(value)
        if price is None:
            invalid.append(name)
            continue
        if parsed.threshold is None:
            flat.setdefault(parsed.base, {})[parsed.service] = price
        else:
            by_threshold = above.setdefault(parsed.base, {})
            by_threshold.setdefault(parsed.threshold, {})[parsed.service] = price
    alias = flat.pop(_CACHE_HIT_ALIAS, None)
    if alias is not None and "cache_read_input_token_cost" not in flat:
        flat["cache_read_input_token_cost"] = alias
    fields = {
        base: _FieldPrices(
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
        off_peak=_compile_off_peak(entry.get("off_peak_pricing"), ignored, invalid),
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
        tables={},
    )


def _pair(value: object) -> tuple[Decimal, Decimal] | None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        return None
    low, high = (_price(bound) for bound in value)
    if low is None or high is None or low > high:
        return None
    return low, high


_TIER_KEYS: Final = frozenset(("range", "max_results_range", "input_cost_per_query", *_TIER_FIELDS))
_OFF_PEAK_KEYS: Final = frozenset(("hours_utc", "windows", "weekday_timezone", *_OFF_PEAK_FIELDS))


def _compile_tiers(
    value: object, ignored: list[str], invalid: list[str]
) -> tuple[tuple[_ContextTier, ...], tuple[_QueryTier, ...]]:
    if value is None:
        return (), ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        invalid.append("tiered_pricing")
        return (), ()
    context: list[_ContextTier] = []
    queries: list[_QueryTier] = []
    for tier in value:
        if not isinstance(tier, Mapping):
            invalid.append("tiered_pricing")
            continue
        ignored.extend(f"tiered_pricing.{key}" for key in tier if key not in _TIER_KEYS)
        if "max_results_range" in tier:
            bounds = _pair(tier["max_results_range"])
            price = _price(tier.get("input_cost_per_query"))
            if bounds is None or price is None:
                invalid.append("tiered_pricing")
                continue
            queries.append(_QueryTier(low=bounds[0], high=bounds[1], price=price))
            continue
        bounds = _pair(tier.get("range"))
        prices = {
            name: price for name in _TIER_FIELDS if (price := _price(tier.get(name))) is not None
        }
        # As in LiteLLM, a tier without an input price is no tier to bill a prompt by.
        if bounds is None or "input_cost_per_token" not in prices:
            invalid.append("tiered_pricing")
            continue
        label = f"({_plain(bounds[0])}, {_plain(bounds[1])}]"
        context.append(_ContextTier(start=bounds[0], end=bounds[1], prices=prices, label=label))
    context.sort(key=lambda tier: tier.start)
    return tuple(context), tuple(queries)


def _plain(number: Decimal) -> str:
    return str(int(number)) if number == number.to_integral_value() else str(number)


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
        price = _price(raw)
        if price is None:
            invalid.append("search_context_cost_per_query")
            continue
        prices[size] = price
    return prices


_WEEKDAYS: Final[Mapping[str, int]] = {
    "mon": 1, "monday": 1, "tue": 2, "tues": 2, "tuesday": 2, "wed": 3, "wednesday": 3,
    "thu": 4, "thur": 4, "thurs": 4, "thursday": 4, "fri": 5, "friday": 5,
    "sat": 6, "saturday": 6, "sun": 7, "sunday": 7,
}  # fmt: skip


def _compile_off_peak(value: object, ignored: list[str], invalid: list[str]) -> _OffPeak | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        invalid.append("off_peak_pricing")
        return None
    ignored.extend(f"off_peak_pricing.{key}" for key in value if key not in _OFF_PEAK_KEYS)
    prices: dict[str, Decimal] = {}
    for name in _OFF_PEAK_FIELDS:
        if value.get(name) is None:
            continue
        price = _price(value[name])
        if price is None:
            invalid.append("off_peak_pricing")
            continue
        prices[name] = price
    every_day = _windows(value.get("hours_utc"), invalid)
    by_weekday: list[tuple[frozenset[int], tuple[tuple[int, int], ...]]] = []
    rules = value.get("windows")
    if rules is not None:
        if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
            invalid.append("off_peak_pricing")
            rules = ()
        for rule in rules:
            if not isinstance(rule, Mapping):
                invalid.append("off_peak_pricing")
                continue
            days = _weekdays(rule.get("weekdays"), invalid)
            windows = _windows(rule.get("hours_utc"), invalid)
            if days and windows:
                by_weekday.append((days, windows))
    day = _minutes(every_day)
    week = b"".join(
        _union(day, *(_minutes(windows) for days, windows in by_weekday if weekday in days))
        for weekday in range(1, 8)
    )
    return _OffPeak(
        prices=prices,
        every_day=every_day,
        by_weekday=tuple(by_weekday),
        weekday_zone=_zone(value.get("weekday_timezone")),
        day=day,
        week=week,
    )


def _zone(name: object) -> tzinfo | None:
    if name is None:
        return UTC
    if not isinstance(name, str) or not name.strip():
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        hours = _FIXED_ZONES.get(name.strip())
        return None if hours is None else timezone(timedelta(hours=hours))


def _weekdays(value: object, invalid: list[str]) -> frozenset[int]:
    # As in LiteLLM, a rule without weekdays applies every day.
    if value is None:
        return frozenset(range(1, 8))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        invalid.append("off_peak_pricing")
        return frozenset()
    days: set[int] = set()
    for day in value:
        if isinstance(day, int) and not isinstance(day, bool) and 1 <= day <= 7:
            days.add(day)
        elif isinstance(day, str) and day.strip().lower() in _WEEKDAYS:
            days.add(_WEEKDAYS[day.strip().lower()])
        else:
            invalid.append("off_peak_pricing")
    return frozenset(days)


def _windows(value: object, invalid: list[str]) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    texts = (value,) if isinstance(value, str) else value
    if not isinstance(texts, Sequence):
        invalid.append("off_peak_pricing")
        return ()
    windows: list[tuple[int, int]] = []
    for text in texts:
        window = _window(text)
        if window is None:
            invalid.append("off_peak_pricing")
        else:
            windows.append(window)
    return tuple(windows)


def _window(text: object) -> tuple[int, int] | None:
    if not isinstance(text, str) or text.count("-") != 1:
        return None
    start, end = (_minute_of_day(part.strip()) for part in text.split("-"))
    if start is None or end is None:
        return None
    return start, end


def _minute_of_day(text: str) -> int | None:
    hours, _, minutes = text.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and hours.isascii() and minutes.isascii()):
        return None
    hour, minute = int(hours), int(minutes)
    if hour > 24 or minute > 59 or (hour == 24 and minute):
        return None
    return (hour * 60 + minute) % (24 * 60)  # "24:00" is midnight, like "00:00"


_DAY: Final = 24 * 60


def _minutes(windows: tuple[tuple[int, int], ...]) -> bytes:
    """One flag per minute of the day: 1 within one of the windows."""
    flags = bytearray(_DAY)
    for start, end in windows:
        # Start inclusive, end exclusive; a window that ends before it starts runs past midnight,
        # and one that ends where it starts covers the whole day ("00:00-00:00").
        if start < end:
            flags[start:end] = b"\x01" * (end - start)
        else:
            flags[start:] = b"\x01" * (_DAY - start)
            flags[:end] = b"\x01" * end
    return bytes(flags)


def _union(*flags: bytes) -> bytes:
    return bytes(any(minute) for minute in zip(*flags, strict=True))


def _is_off_peak(off_peak: _OffPeak, at: datetime) -> bool:
    utc = at.astimezone(UTC)
    minute = utc.hour * 60 + utc.minute
    zone = off_peak.weekday_zone
    if not off_peak.by_weekday or zone is None:
        return off_peak.day[minute] == 1
    # The hours are UTC; the weekday is read on the entry's calendar (UTC unless it names one).
    weekday = utc.astimezone(zone).isoweekday()
    return off_peak.week[(weekday - 1) * _DAY + minute] == 1


# --- Pricing --------------------------------------------------------------------------------

# Exact arithmetic: with this precision no product or sum of our bounded quantities and any
# sane price is ever rounded, and if one ever were, Inexact raises instead of losing a cent.
_EXACT: Final = decimal.Context(
    prec=1000,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow],
)
_ZERO: Final = Decimal(0)
_MULTIPLY: Final = _EXACT.multiply
_ADD: Final = _EXACT.add


class _Rate(NamedTuple):
    price: Decimal
    standard_for_tier: bool  # a non-standard service tier was asked and a standard price used
    threshold: int | None  # the long-context threshold of the price, if any
    source: Literal["entry", "tier", "off_peak", "derived"]


class _Priced(NamedTuple):
    """How one dimension is priced in one pricing regime."""

    rate: _Rate | None
    fallback: str | None  # the dimension whose price it uses, for want of its own
    derived: str | None  # why its price is derived rather than read


class _Resolver:
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
        tier: _ContextTier | None,
        off_peak: _OffPeak | None,
    ) -> None:
        self.compiled = compiled
        self.prompt = prompt  # any prompt size in the band: it crosses the same thresholds
        self.service = service
        self.tier = tier
        self.off_peak = off_peak
        self.rates: dict[str, _Rate | None] = {}
        self.fallbacks: dict[str, str] = {}
        self.derived: dict[str, str] = {}

    def own(self, field: str) -> _Rate | None:
        """The entry's own price for a field, without fallbacks to other dimensions."""
        asks_tier = self.service != ""
        # An off-peak price replaces whatever would apply otherwise, long-context included,
        # as LiteLLM bills it: DeepSeek publishes one off-peak price per token type.
        if self.off_peak is not None and field in self.off_peak.prices:
            return _Rate(self.off_peak.prices[field], asks_tier, None, "off_peak")
        if self.tier is not None:
            if field in self.tier.prices:
                return _Rate(self.tier.prices[field], asks_tier, None, "tier")
            if field in _TIER_OWNED:
                return None
        prices = self.compiled.fields.get(field)
        if prices is None:
            return None
        # The highest threshold the prompt crosses that prices this field wins. At a threshold,
        # the service tier's long-context price comes first, then the standard long-context
        # price (LiteLLM does the same): the context tier changes the price more than the
        # service tier does.
        for threshold, by_service in prices.above:
            if self.prompt > threshold or (
                self.compiled.inclusive_thresholds and self.prompt == threshold
            ):
                if asks_tier and self.service in by_service:
                    return _Rate(by_service[self.service], False, threshold, "entry")
                if "" in by_service:
                    return _Rate(by_service[""], asks_tier, threshold, "entry")
        if asks_tier and self.service in prices.flat:
            return _Rate(prices.flat[self.service], False, None, "entry")
        if "" in prices.flat:
            return _Rate(prices.flat[""], asks_tier, None, "entry")
        return None

    def rate(self, dim: _Dimension) -> _Rate | None:
        if dim.name in self.rates:
            return self.rates[dim.name]
        rate = self.own(dim.field)
        if dim.name == "reasoning" and rate is not None and rate.standard_for_tier:
            # Reasoning tokens are output tokens. A service tier that prices output but not
            # reasoning bills reasoning at its output price rather than at the standard
            # reasoning price (LiteLLM does the same).
            output = self.rate(_BY_NAME["output"])
            if output is not None and not output.standard_for_tier:
                rate = output
                self.derived[dim.name] = (
                    f"service tier {_SUFFIX_SERVICE[self.service]!r} has no reasoning price; "
                    "its output price used"
                )
        if rate is None and dim.name == "cache_read":
            rate = self._default_cache_read()
        if rate is None and dim.fallback is not None:
            # A part of the prompt (or of the output) without a price of its own is billed as
            # ordinary prompt (output) tokens: that is how providers without a separate price
            # bill it, and what LiteLLM does.
            rate = self.rate(_BY_NAME[dim.fallback])
            if rate is not None:
                self.fallbacks[dim.name] = dim.fallback
        self.rates[dim.name] = rate
        return rate

    def priced(self, dim: _Dimension) -> _Priced:
        rate = self.rate(dim)
        return _Priced(rate, self.fallbacks.get(dim.name), self.derived.get(dim.name))

    def _default_cache_read(self) -> _Rate | None:
        ratio = self.compiled.default_cache_read_ratio
        if ratio is None:
            return None
        input_rate = self.rate(_BY_NAME["input"])
        if input_rate is None:
            return None
        self.derived["cache_read"] = (
            f"no cache_read price; {self.compiled.provider} bills cached input at "
            f"{_plain(ratio * 100)}% of the input price"
        )
        price = _EXACT.multiply(input_rate.price, ratio)
        return _Rate(price, input_rate.standard_for_tier, input_rate.threshold, "derived")


# --- How quantities are counted -------------------------------------------------------------

# The position of every usage field in msgspec.structs.astuple(usage).
_POSITION: Final[Mapping[str, int]] = {
    name: position for position, name in enumerate(Usage.__struct_fields__)
}


def _count_of(dim: _Dimension) -> str:
    """The usage count a dimension's quantity starts from."""
    return f"{dim.name}_tokens" if dim.tokens else dim.name


# The parts of a count that other dimensions price, taken away so that every token is priced
# exactly once. Cached audio and image tokens are parts of both cache_read_tokens and their
# modality count, so the input text is what remains after adding them back once.
_LESS: Final[Mapping[str, tuple[str, ...]]] = {
    "input": (
        "cache_read_tokens",
        "cache_write_tokens",
        "input_audio_tokens",
        "input_image_tokens",
        "input_video_tokens",
    ),
    "cache_read": ("cache_read_audio_tokens", "cache_read_image_tokens"),
    "cache_write": ("cache_write_1h_tokens",),  # the rest is written for 5 minutes
    "input_audio": ("cache_read_audio_tokens",),
    "input_image": ("cache_read_image_tokens",),
    "output": (
        "reasoning_tokens",
        "output_audio_tokens",
        "output_image_tokens",
        "output_video_tokens",
    ),
}
_MORE: Final[Mapping[str, tuple[str, ...]]] = {
    "input": ("cache_read_audio_tokens", "cache_read_image_tokens"),
}
# Every count starts exactly one dimension. So when no dimension's quantity is negative, no count
# is negative and no part is larger than its total: the rules validate_usage checks.
assert sorted(_count_of(dim) for dim in _DIMENSIONS) == sorted(_COUNT_FIELDS)

# One bit per count, in astuple order: a usage's mask has the bits of its non-zero counts.
_BITS: Final = tuple(1 << position for position in range(len(_COUNT_FIELDS)))
# Counts whose price also depends on max_results or search_context_size.
_CHOOSING: Final = _BITS[_POSITION["queries"]] | _BITS[_POSITION["web_searches"]]
_ASTUPLE: Final = msgspec.structs.astuple
_MAX_RESULTS: Final = _POSITION["max_results"]
_SEARCH_CONTEXT_SIZE: Final = _POSITION["search_context_size"]


def _mask(*names: str) -> int:
    return sum(_BITS[_POSITION[name]] for name in names)


# Ordinary chat calls use only these counts. Their mask is found without a pass over all counts:
# input and output are always in it (their steps check them even when 0), and the other five
# when they are not 0.
_CHAT_COUNTS: Final = (
    "input_tokens",
    "output_tokens",
    "requests",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
)
_CHAT_MASK: Final = _mask(*_CHAT_COUNTS[:2])
_CACHE_READ: Final = _POSITION["cache_read_tokens"]
_CACHE_WRITE: Final = _POSITION["cache_write_tokens"]
_CACHE_WRITE_1H: Final = _POSITION["cache_write_1h_tokens"]
_REASONING: Final = _POSITION["reasoning_tokens"]
_CACHE_READ_BIT: Final = _BITS[_CACHE_READ]
_CACHE_WRITE_BIT: Final = _BITS[_CACHE_WRITE]
_CACHE_WRITE_1H_BIT: Final = _BITS[_CACHE_WRITE_1H]
_REASONING_BIT: Final = _BITS[_REASONING]
_REQUESTS: Final = _POSITION["requests"]
_REQUESTS_BIT: Final = _BITS[_REQUESTS]
# The other counts are 0 in a chat call: three runs of them, each compared with zeros at once.
_OTHERS_A: Final = slice(_POSITION["cache_read_audio_tokens"], _REASONING)
_OTHERS_B: Final = slice(_POSITION["input_audio_tokens"], _REQUESTS)
_OTHERS_C: Final = slice(_POSITION["seconds"], len(_COUNT_FIELDS))
assert {
    position for run in (_OTHERS_A, _OTHERS_B, _OTHERS_C) for position in range(run.start, run.stop)
} == {_POSITION[name] for name in _COUNT_FIELDS if name not in _CHAT_COUNTS}
_ZEROS: Final = (0,) * len(_COUNT_FIELDS)
_ZEROS_A: Final = _ZEROS[_OTHERS_A]
_ZEROS_B: Final = _ZEROS[_OTHERS_B]
_ZEROS_C: Final = _ZEROS[_OTHERS_C]
# The counts after input_tokens and output_tokens in a plain chat call: all 0.
_AFTER_OUTPUT: Final = slice(_POSITION["output_tokens"] + 1, len(_COUNT_FIELDS))
_PLAIN_CHAT: Final = _ZEROS[_AFTER_OUTPUT]
assert _AFTER_OUTPUT.start == 2, "input_tokens and output_tokens come first"
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
# A note, or the two halves of a note that names the prompt size between them.
_Note = tuple[str, str | None]
# What a quote says besides its components: the unpriced dimensions, the notes (None when they
# name the prompt size, and are built from the note parts that follow) and the note parts.
_Annotation = tuple[tuple[str, ...], tuple[str, ...] | None, tuple[_Note, ...]]


class _Plan:
    """How to price the usages with one mask in one pricing regime: the steps to run and what
    the quote says besides. Built once per compiled entry, regime and mask."""

    __slots__ = (
        "annotation",
        "annotations",
        "compiled",
        "entries",
        "from_zero",
        "query_note",
        "service",
        "steps",
        "tier",
    )

    def __init__(
        self,
        compiled: CompiledPrices,
        service: str,
        tier: int,
        steps: tuple[_Step, ...],
        entries: tuple[tuple[_Dimension, _Priced, _Rate | None], ...],
        query_note: bool,
    ) -> None:
        self.compiled = compiled
        self.service = service
        self.tier = tier
        self.steps = steps
        self.entries = entries  # per step: the dimension, its regime price and the rate used
        self.query_note = query_note  # max_results was not given for a price by max_results
        # What the quote says, by the mask of the steps whose quantity is 0.
        self.annotations: dict[int, _Annotation] = {}
        self.annotation = self.annotate(0)  # when every step priced a quantity
        # A running total from 0 has the exponent min(0, the exponents of the costs) and is never
        # -0. Only a price with an exponent above 0, or -0, makes the plain sum of the costs
        # differ from it, and then the sum is added to 0 once.
        self.from_zero = any(
            price is not None and (price.is_signed() or _exponent(price) > 0)
            for _, _, _, _, price, _ in steps
        )

    def annotate(self, zeros: int) -> _Annotation:
        """The unpriced dimensions and notes of a quote whose `zeros` steps priced nothing."""
        annotation = self.annotations.get(zeros)
        if annotation is not None:
            return annotation
        used: list[tuple[str, _Priced, _Rate]] = []
        unpriced: list[str] = []
        parts: list[_Note] = []
        for (*_, bit), (dim, priced, rate) in zip(self.steps, self.entries, strict=True):
            if zeros & bit:
                continue
            if rate is not None:
                used.append((dim.name, priced, rate))
            elif dim.unpriced_if_missing:
                unpriced.append(dim.name)
            if dim.name == "queries" and self.query_note:
                parts.append(("max_results not given; 10 assumed for the query price tier", None))
        service_tier = _SUFFIX_SERVICE.get(self.service, "standard")
        parts.extend(_explain(used, self.compiled, self.tier, service_tier))
        names_prompt = any(tail is not None for _, tail in parts)
        annotation = (
            tuple(unpriced),
            None if names_prompt else tuple(head for head, _ in parts),
            tuple(parts),
        )
        self.annotations[zeros] = annotation
        return annotation


def _exponent(number: Decimal) -> int:
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int), "prices are finite"
    return exponent


def _plan(compiled: CompiledPrices, key: tuple[Any, ...]) -> _Plan:
    """Build the plan for one regime and mask (see price_call for the key); memoize it."""
    service, band, tier_index, off_peak_open, mask = key[:5]
    query_tier, default_max_results, search_context_size = (
        key[5] if len(key) > 5 else (-1, False, "medium")
    )
    if band == 0:
        prompt = -1
    else:
        threshold = compiled.thresholds[band - 1]
        prompt = threshold if compiled.inclusive_thresholds else threshold + 1
    resolver = _Resolver(
        compiled,
        prompt,
        service,
        compiled.context_tiers[tier_index] if tier_index >= 0 else None,
        compiled.off_peak if off_peak_open else None,
    )
    steps: list[_Step] = []
    entries: list[tuple[_Dimension, _Priced, _Rate | None]] = []
    for dim in _DIMENSIONS:
        count = _POSITION[_count_of(dim)]
        less = tuple(_POSITION[name] for name in _LESS.get(dim.name, ()))
        more = tuple(_POSITION[name] for name in _MORE.get(dim.name, ()))
        if not mask & (_BITS[count] | sum(_BITS[position] for position in (*less, *more))):
            continue  # every count it is made of is 0
        priced = resolver.priced(dim)
        rate = priced.rate
        if dim.name == "queries" and compiled.query_tiers:
            rate = _Rate(compiled.query_tiers[query_tier].price, service != "", None, "tier")
        elif dim.name == "web_searches":
            price = compiled.search_context.get(search_context_size)
            rate = None if price is None else _Rate(price, service != "", None, "entry")
        if rate is None and not dim.unpriced_if_missing:
            assert dim.name == "requests", "price_call checks requests before it runs the steps"
            continue  # free: no per-request fee
        steps.append(
            (
                dim.name,
                count,
                tuple(position for position in less if mask & _BITS[position]),
                tuple(position for position in more if mask & _BITS[position]),
                None if rate is None else rate.price,
                1 << len(steps),
            )
        )
        entries.append((dim, priced, rate))
    plan = _Plan(
        compiled,
        service,
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


def _query_tier(compiled: CompiledPrices, max_results: int | None) -> int:
    """The index of the max_results tier a search call is priced by, or -1 without tiers."""
    if not compiled.query_tiers:
        return -1
    value = 10 if max_results is None else max_results  # LiteLLM's default for search calls
    # Ranges are inclusive at both ends ([1, 10], [11, 20]); past the last, the last tier.
    for index, tier in enumerate(compiled.query_tiers):
        if tier.low <= value <= tier.high:
            return index
    return len(compiled.query_tiers) - 1


def _regime(compiled: CompiledPrices, prompt: int, at: datetime) -> tuple[int, int, bool]:
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
        _context_tier_index(compiled, prompt),
        off_peak is not None and _is_off_peak(off_peak, at),
    )


def _context_tier_index(compiled: CompiledPrices, prompt: int) -> int:
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


#: What `quote` answers: the total, the components, the unpriced dimensions and the notes.
Quote = tuple[Decimal, tuple[CostComponent, ...], tuple[str, ...], tuple[str, ...]]


def quote(compiled: CompiledPrices, usage: Usage, service_tier: str, at: datetime) -> Quote:
    """`price_call` on a compiled entry, answered as a plain tuple (the calculator's path)."""
    values = _ASTUPLE(usage)
    # The mask of the counts that are not 0 chooses the plan, whose steps check those counts as
    # validate_usage does. A count that is 0 prices nothing and is not checked further.
    if values[_AFTER_OUTPUT] == _PLAIN_CHAT:
        mask = _CHAT_MASK  # input and output tokens only
    elif (
        values[_OTHERS_A] == _ZEROS_A
        and values[_OTHERS_B] == _ZEROS_B
        and values[_OTHERS_C] == _ZEROS_C
    ):
        mask = _CHAT_MASK
        if values[_CACHE_READ] != 0:
            mask |= _CACHE_READ_BIT
        if values[_CACHE_WRITE] != 0:
            mask |= _CACHE_WRITE_BIT
        if values[_CACHE_WRITE_1H] != 0:
            mask |= _CACHE_WRITE_1H_BIT
        if values[_REASONING] != 0:
            mask |= _REASONING_BIT
        if values[_REQUESTS] != 0:
            mask |= _REQUESTS_BIT
    else:
        mask = _mask_of(values, usage, service_tier, at)
    requests = values[_REQUESTS]  # checked here: most plans have no step for it
    max_results = values[_MAX_RESULTS]
    service = _SERVICE_SUFFIX.get(service_tier)
    zone = at.tzinfo
    if (
        type(requests) is not int
        or not 0 <= requests <= MAX_QUANTITY
        or (
            max_results is not None
            and (type(max_results) is not int or not 0 <= max_results <= MAX_QUANTITY)
        )
        or values[_SEARCH_CONTEXT_SIZE] not in _SEARCH_CONTEXT_SIZES
        or service is None
        or zone is None
        or (zone is not UTC and at.utcoffset() is None)
    ):
        _refuse(usage, service_tier, at)

    prompt = values[0]  # input_tokens, which chooses the long-context prices
    total: Decimal | None = None
    components: list[CostComponent] = []
    zeros = 0
    try:
        # The plan's key: service suffix, long-context thresholds crossed, tiered_pricing range
        # index (-1: none), off-peak window open, mask [, choice of a search price].
        key: tuple[Any, ...]
        if compiled.thresholds or compiled.context_tiers or compiled.off_peak:
            key = (service, *_regime(compiled, prompt, at), mask)
        else:
            key = (service, 0, -1, False, mask)
        if mask & _CHOOSING:
            choice = (
                _query_tier(compiled, max_results),
                max_results is None,
                values[_SEARCH_CONTEXT_SIZE],
            )
            key = (*key, choice)
        plan = compiled.tables.get(key) or _plan(compiled, key)

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
            cost = _MULTIPLY(quantity, price)
            total = cost if total is None else _ADD(total, cost)
            components.append(CostComponent(name, quantity, price, cost))
    except (TypeError, ArithmeticError):
        # A count that is no whole number, met before the step of its own count checked it:
        # input_tokens choosing the regime, or a part taken from its total.
        _check(usage, service_tier, at)
        raise

    unpriced, notes, parts = plan.annotate(zeros) if zeros else plan.annotation
    if notes is None:
        notes = tuple([head if tail is None else f"{head}{prompt}{tail}" for head, tail in parts])
    if total is None:
        total = _ZERO
    elif plan.from_zero:
        total = _ADD(_ZERO, total)
    return total, tuple(components), unpriced, notes


def _mask_of(values: tuple[Any, ...], usage: Usage, service_tier: str, at: datetime) -> int:
    """The mask of the counts that are not 0, in one pass over them all."""
    mask: int = sum(compress(_BITS, values))
    # Every count left out of the mask must be 0, not None or another false value.
    if values[: len(_COUNT_FIELDS)].count(0) != len(_COUNT_FIELDS) - mask.bit_count():
        _refuse(usage, service_tier, at)
    return mask


def _check(usage: Usage, service_tier: str, at: datetime) -> None:
    """The checks of price_call, one by one, each raising the error that names what is wrong."""
    validate_usage(usage)
    if service_tier not in _SERVICE_SUFFIX:
        raise InvalidCall(
            f"unknown service tier {service_tier!r}; use one of standard, batch, priority, flex"
        )
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidCall("at must be timezone-aware")


def _refuse(usage: Usage, service_tier: str, at: datetime) -> NoReturn:
    """Raise the error of a call that the fast checks of price_call found amiss."""
    _check(usage, service_tier, at)
    raise AssertionError("price_call refused a call that validate_usage accepts")


def _explain(
    used: list[tuple[str, _Priced, _Rate]],
    compiled: CompiledPrices,
    tier_index: int,
    service_tier: str,
) -> list[_Note]:
    """Notes that say which prices were used where the obvious one was not."""
    notes: list[_Note] = []
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
        service = _SERVICE_SUFFIX[service_tier]
        subject = "this model" if service not in compiled.services else ", ".join(standard)
        notes.append(
            (
                f"service tier {service_tier!r} has no prices for {subject}; standard prices used",
                None,
            )
        )
    return notes


def _long_context_notes(
    used: list[tuple[str, _Priced, _Rate]],
    compiled: CompiledPrices,
    notes: list[_Note],
) -> None:
    thresholds = [rate.threshold for _, _, rate in used if rate.threshold is not None]
    if not thresholds:
        return
    highest = max(thresholds)
    comparison = ">=" if compiled.inclusive_thresholds else ">"
    notes.append(
        (
            f"long-context prices above {_tokens_label(highest)} tokens applied (input_tokens ",
            f" {comparison} {highest})",
        )
    )
    behind = [
        name
        for name, priced, rate in used
        if _BY_NAME[name].tokens
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
