"""The fast path (`quote`, `price_call`) against the plain reference pricer, to the digit.

The entries are the bundled snapshot's: every one that has long-context thresholds,
tiered_pricing ranges, search tiers, an off-peak calendar, service-tier prices, search context
prices or a provider default, and a stride of the rest; and two built here, for what the
snapshot lacks. Valid usages are generated from the parts statement (each count is its own rest
plus the rests of the counts inside it), with prompts drawn at, below and above each entry's
thresholds; times and service tiers are generated too. Invalid usages must be refused with the
same message and fields. Every entry of the snapshot also prices a few fixed calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal as D
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiserver.costs.pricing import (
    CompiledPrices,
    PriceQuote,
    Usage,
    UsageError,
    compile_entry,
    price_call,
    quote,
)
from aiserver.costs.pricing.dimensions import DIMENSIONS
from aiserver.costs.pricing.reference import reference_quote
from aiserver.costs.pricing.usage import COUNT_FIELDS, PARTS
from aiserver.costs.refresh import snapshot_bytes
from aiserver.costs.source import parse_source

TIERS = ("standard", "batch", "priority", "flex")
NOON = datetime(2025, 1, 8, 12, 0, tzinfo=UTC)


# Beside the snapshot: prices whose digits a sum may change (a positive exponent, -0, 0E+3),
# on every dimension the calculator prices.
EDGES: dict[str, Any] = {
    **{dim.field: D(f"{index + 1}E+{index % 3 + 1}") for index, dim in enumerate(DIMENSIONS)},
    "cost_per_second": D("-0"),
    "ocr_cost_per_page": D("0E+3"),
    "output_cost_per_image": D("2.5E-1"),
    "search_context_cost_per_query": {"search_context_size_low": D("1E+1")},
    "litellm_provider": "test",
}
# Off-peak windows by weekday on a calendar other than UTC's, and one past midnight.
OFF_PEAK_ELSEWHERE: dict[str, Any] = {
    "input_cost_per_token": D("2E-7"),
    "output_cost_per_token": D("8E-7"),
    "litellm_provider": "test",
    "off_peak_pricing": {
        "input_cost_per_token": D("1E-7"),
        "output_cost_per_token": D("4E-7"),
        "hours_utc": "16:30-00:30",
        "weekday_timezone": "Asia/Shanghai",
        "windows": [
            {"weekdays": ["sat", "sun"], "hours_utc": "00:00-00:00"},
            {"weekdays": [1], "hours_utc": ["22:00-02:00", "09:15-09:45"]},
        ],
    },
}
SYNTHETIC = {"test/edges": EDGES, "test/off-peak-elsewhere": OFF_PEAK_ELSEWHERE}


@cache
def compiled_entries() -> dict[str, CompiledPrices]:
    models = parse_source(snapshot_bytes()).models
    entries = {key: model.entry for key, model in sorted(models.items())}
    return {key: compile_entry(entry) for key, entry in {**entries, **SYNTHETIC}.items()}


def _has_a_feature(compiled: CompiledPrices) -> bool:
    return bool(
        compiled.thresholds
        or compiled.context_tiers
        or compiled.query_tiers
        or compiled.off_peak
        or compiled.services
        or compiled.search_context
        or compiled.default_cache_read_ratio
    )


@cache
def entry_keys() -> tuple[str, ...]:
    entries = compiled_entries()
    featured = [key for key, compiled in entries.items() if _has_a_feature(compiled)]
    plain = [key for key, compiled in entries.items() if not _has_a_feature(compiled)]
    return (*featured, *plain[::20])


def test_the_entries_cover_every_feature() -> None:
    chosen = [compiled_entries()[key] for key in entry_keys()]
    assert len(chosen) > 1000
    assert sum(bool(c.thresholds) for c in chosen) > 100
    assert any(c.inclusive_thresholds and c.thresholds for c in chosen)
    assert sum(bool(c.context_tiers) for c in chosen) > 20
    assert sum(bool(c.query_tiers) for c in chosen) >= 2
    assert sum(bool(c.off_peak) for c in chosen) >= 5
    assert any(c.off_peak and c.off_peak.by_weekday for c in chosen)
    assert sum(bool(c.services) for c in chosen) > 100
    assert sum(bool(c.search_context) for c in chosen) > 100
    assert any(c.default_cache_read_ratio for c in chosen)
    assert set(SYNTHETIC) <= set(entry_keys())


def _inside(total: str) -> set[str]:
    found: set[str] = set()
    for part in PARTS.get(total, ()):
        found |= {part, *_inside(part)}
    return found


INSIDE = {name: _inside(name) for name in COUNT_FIELDS}
ZONES = [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30))]
ZONES.append(ZoneInfo("America/New_York"))
MOMENTS = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.sampled_from(ZONES)
)


def _prompts(compiled: CompiledPrices) -> st.SearchStrategy[int]:
    """Prompt sizes at, just below and just above the entry's thresholds and range ends."""
    edges = {*compiled.thresholds, *(int(tier.end) for tier in compiled.context_tiers)}
    near = sorted({edge + step for edge in edges for step in (-1, 0, 1) if edge + step >= 0})
    small = st.integers(min_value=0, max_value=5000)
    large = st.integers(min_value=0, max_value=2_000_000)
    return st.one_of(small, large, st.sampled_from(near)) if near else st.one_of(small, large)


@st.composite
def calls(draw: st.DrawFn, keys: st.SearchStrategy[str]) -> tuple[str, Usage, str, datetime]:
    """A valid call: a few counts that are not 0, every total the sum of the rests in it."""
    key = draw(keys)
    compiled = compiled_entries()[key]
    chosen = draw(st.lists(st.sampled_from(COUNT_FIELDS), max_size=6, unique=True))
    rests = {name: draw(st.integers(min_value=1, max_value=300_000)) for name in chosen}
    rests["output_tokens"] = draw(st.integers(min_value=0, max_value=50_000))
    counts = {
        name: rests.get(name, 0) + sum(rests.get(i, 0) for i in INSIDE[name])
        for name in COUNT_FIELDS
    }
    # the prompt, where the entry's prices change when it can be (its parts may already pass it)
    counts["input_tokens"] = max(
        draw(_prompts(compiled)), counts["input_tokens"] - rests.get("input_tokens", 0)
    )
    choices = {
        "max_results": draw(st.none() | st.integers(min_value=0, max_value=120)),
        "search_context_size": draw(st.sampled_from(["low", "medium", "high"])),
    }
    return key, Usage(**counts, **choices), draw(st.sampled_from(TIERS)), draw(MOMENTS)


# Deterministic, so that CI sees the same examples on every run.
STEADY = settings(
    deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
ENTRIES = st.deferred(lambda: st.sampled_from(entry_keys()))


def _outcome(pricer: Any, compiled: CompiledPrices, usage: Usage, tier: str, at: datetime) -> bytes:
    """The quote as JSON (every digit of every decimal), or the error's message and fields."""
    try:
        return msgspec.json.encode(PriceQuote(*pricer(compiled, usage, tier, at)))
    except UsageError as error:
        return msgspec.json.encode([str(error), error.fields])


def _agree(key: str, usage: Usage, tier: str, at: datetime) -> None:
    compiled = compiled_entries()[key]
    expected = _outcome(reference_quote, compiled, usage, tier, at)
    assert _outcome(quote, compiled, usage, tier, at) == expected, (key, usage, tier, at)


@settings(STEADY, max_examples=1200)
@given(call=calls(ENTRIES))
def test_the_fast_path_prices_every_call_as_the_reference_does(
    call: tuple[str, Usage, str, datetime],
) -> None:
    _agree(*call)
    key, usage, tier, at = call
    assert price_call(compiled_entries()[key], usage, service_tier=tier, at=at) == PriceQuote(
        *reference_quote(compiled_entries()[key], usage, tier, at)  # type: ignore[arg-type]
    )


@settings(STEADY, max_examples=300)
@given(call=calls(st.just("test/edges")))
def test_the_fast_path_writes_the_digits_of_a_sum_from_zero(
    call: tuple[str, Usage, str, datetime],
) -> None:
    _agree(*call)


# Not whole numbers in range. (False and 0.0 are left out: they equal 0, which prices nothing,
# so the fast path may price them as 0 where validation refuses them.)
NOT_COUNTS = st.sampled_from([None, 1.5, True, "10", 10**15 + 1])


@st.composite
def any_counts(draw: st.DrawFn) -> tuple[str, Usage, str, datetime]:
    """Counts that are often negative, no whole numbers, or parts larger than their totals."""
    key = draw(ENTRIES)
    chosen = draw(st.lists(st.sampled_from(COUNT_FIELDS), min_size=1, max_size=6, unique=True))
    counts = {name: draw(st.integers(min_value=-2, max_value=6) | NOT_COUNTS) for name in chosen}
    counts["input_tokens"] = draw(st.integers(min_value=-1, max_value=10))
    return key, Usage(**counts), draw(st.sampled_from(TIERS)), NOON


@settings(STEADY, max_examples=600)
@given(call=any_counts())
def test_the_fast_path_refuses_every_call_the_reference_refuses_with_its_words(
    call: tuple[str, Usage, str, datetime],
) -> None:
    _agree(*call)


def _sweep() -> Iterator[tuple[str, Usage, str]]:
    """A few usages on every entry of the snapshot, in turn over the service tiers."""
    usages = [
        Usage(input_tokens=1200, output_tokens=350),
        Usage(input_tokens=300_000, output_tokens=2000, cache_read_tokens=100_000,
              cache_write_tokens=20_000, cache_write_1h_tokens=5000, reasoning_tokens=700),
        Usage(input_tokens=900, input_audio_tokens=300, cache_read_tokens=200,
              cache_read_audio_tokens=100, input_image_tokens=100, output_tokens=90,
              output_audio_tokens=30, images=1, seconds=5, queries=2, web_searches=1, pages=3,
              requests=1),
    ]  # fmt: skip
    for index, key in enumerate(compiled_entries()):
        for usage in usages:
            yield key, usage, TIERS[index % len(TIERS)]


def test_the_fast_path_prices_a_few_calls_on_every_entry_as_the_reference_does() -> None:
    swept = list(_sweep())
    assert len(swept) > 3 * 4000  # three usages on each of the snapshot's 4000 and more entries
    for key, usage, tier in swept:
        _agree(key, usage, tier, NOON)


@pytest.mark.parametrize("key", ["deepseek/deepseek-v4-flash", "test/off-peak-elsewhere"])
def test_the_off_peak_calendar_agrees_with_its_windows_minute_by_minute(key: str) -> None:
    # Eight days, every seventh minute: windows by weekday on the entry's calendar, windows
    # past midnight, and the minutes either side of each.
    usage = Usage(input_tokens=1000, output_tokens=10)
    start = datetime(2025, 1, 5, 23, 0, tzinfo=UTC)
    off_peak = 0
    for minute in range(0, 8 * 24 * 60, 7):
        at = start + timedelta(minutes=minute)
        _agree(key, usage, "standard", at)
        off_peak += (
            "off-peak prices applied" in quote(compiled_entries()[key], usage, "standard", at)[3]
        )
    assert 0 < off_peak < 8 * 24 * 60 // 7
