"""The price of one model call, from one LiteLLM-format price entry (aiserver.costs.pricing).

Every expected cost is computed by hand in the comment beside it. Entries marked "real" are the
price fields of the named key in LiteLLM's model_prices_and_context_window.json, copied as they
were decoded (float_hook=Decimal); the others are built for the rule under test.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal as D
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiserver.costs.errors import InvalidCall
from aiserver.costs.pricing import (
    CompiledPrices,
    CostComponent,
    PriceQuote,
    ServiceTier,
    Usage,
    UsageError,
    compile_entry,
    is_price_field,
    is_understood_field,
    price_call,
    validate_usage,
)
from aiserver.costs.pricing.usage import COUNT_FIELDS, PARTS, REST, Rest

WEDNESDAY_NOON = datetime(2025, 1, 8, 12, 0, tzinfo=UTC)

# --- real entries (price fields only) -------------------------------------------------------

# gpt-4o
GPT_4O: dict[str, Any] = {
    "cache_read_input_token_cost": D("1.25e-06"),
    "cache_read_input_token_cost_priority": D("2.125e-06"),
    "input_cost_per_token": D("2.5e-06"),
    "input_cost_per_token_batches": D("1.25e-06"),
    "input_cost_per_token_priority": D("4.25e-06"),
    "litellm_provider": "openai",
    "output_cost_per_token": D("1e-05"),
    "output_cost_per_token_batches": D("5e-06"),
    "output_cost_per_token_priority": D("1.7e-05"),
}
# claude-sonnet-4-5
CLAUDE_SONNET_4_5: dict[str, Any] = {
    "cache_creation_input_token_cost": D("3.75e-06"),
    "cache_creation_input_token_cost_above_1hr": D("6e-06"),
    "cache_read_input_token_cost": D("3e-07"),
    "input_cost_per_token": D("3e-06"),
    "cache_creation_input_token_cost_batches": D("1.875e-06"),
    "cache_read_input_token_cost_batches": D("1.5e-07"),
    "input_cost_per_token_batches": D("1.5e-06"),
    "litellm_provider": "anthropic",
    "output_cost_per_token": D("1.5e-05"),
    "output_cost_per_token_batches": D("7.5e-06"),
    "search_context_cost_per_query": {
        "search_context_size_high": D("0.01"),
        "search_context_size_low": D("0.01"),
        "search_context_size_medium": D("0.01"),
    },
}
# gpt-5.4
GPT_5_4: dict[str, Any] = {
    "cache_read_input_token_cost": D("2.5e-07"),
    "cache_read_input_token_cost_above_272k_tokens": D("5e-07"),
    "cache_read_input_token_cost_batches": D("1.3e-07"),
    "cache_read_input_token_cost_above_272k_tokens_batches": D("2.5e-07"),
    "cache_read_input_token_cost_flex": D("1.3e-07"),
    "cache_read_input_token_cost_priority": D("5e-07"),
    "input_cost_per_token": D("2.5e-06"),
    "input_cost_per_token_above_272k_tokens": D("5e-06"),
    "input_cost_per_token_flex": D("1.25e-06"),
    "input_cost_per_token_batches": D("1.25e-06"),
    "input_cost_per_token_above_272k_tokens_batches": D("2.5e-06"),
    "input_cost_per_token_priority": D("5e-06"),
    "litellm_provider": "openai",
    "output_cost_per_token": D("1.5e-05"),
    "output_cost_per_token_above_272k_tokens": D("2.25e-05"),
    "output_cost_per_token_flex": D("7.5e-06"),
    "output_cost_per_token_batches": D("7.5e-06"),
    "output_cost_per_token_above_272k_tokens_batches": D("1.125e-05"),
    "output_cost_per_token_priority": D("3e-05"),
    "input_cost_per_token_above_272k_tokens_flex": D("2.5e-06"),
    "output_cost_per_token_above_272k_tokens_flex": D("1.125e-05"),
    "cache_read_input_token_cost_above_272k_tokens_flex": D("2.5e-07"),
}
# gemini-2.5-pro (Vertex AI)
GEMINI_2_5_PRO: dict[str, Any] = {
    "cache_read_input_token_cost": D("1.25e-07"),
    "cache_read_input_token_cost_above_200k_tokens": D("2.5e-07"),
    "cache_creation_input_token_cost_above_200k_tokens": D("2.5e-07"),
    "cache_read_input_token_cost_above_200k_tokens_priority": D("4.5e-07"),
    "cache_read_input_token_cost_flex": D("1.25e-07"),
    "cache_read_input_token_cost_priority": D("2.25e-07"),
    "input_cost_per_token": D("1.25e-06"),
    "input_cost_per_token_above_200k_tokens": D("2.5e-06"),
    "litellm_provider": "vertex_ai-language-models",
    "output_cost_per_token": D("1e-05"),
    "output_cost_per_token_above_200k_tokens": D("1.5e-05"),
    "search_context_cost_per_query": {
        "search_context_size_low": D("0.035"),
        "search_context_size_medium": D("0.035"),
        "search_context_size_high": D("0.035"),
    },
    "google_maps_grounding_cost_per_query": D("0.025"),
    "input_cost_per_token_above_200k_tokens_batches": D("1.25e-06"),
    "input_cost_per_token_above_200k_tokens_flex": D("1.25e-06"),
    "input_cost_per_token_above_200k_tokens_priority": D("4.5e-06"),
    "input_cost_per_token_batches": D("6.25e-07"),
    "input_cost_per_token_flex": D("6.25e-07"),
    "input_cost_per_token_priority": D("2.25e-06"),
    "output_cost_per_token_above_200k_tokens_batches": D("7.5e-06"),
    "output_cost_per_token_above_200k_tokens_flex": D("7.5e-06"),
    "output_cost_per_token_above_200k_tokens_priority": D("2.7e-05"),
    "output_cost_per_token_batches": D("5e-06"),
    "output_cost_per_token_flex": D("5e-06"),
    "output_cost_per_token_priority": D("1.8e-05"),
}
# gemini/gemini-2.5-flash
GEMINI_2_5_FLASH: dict[str, Any] = {
    "cache_read_input_audio_token_cost": D("1e-07"),
    "cache_read_input_audio_token_cost_batches": D("1e-07"),
    "cache_read_input_audio_token_cost_flex": D("1e-07"),
    "cache_read_input_audio_token_cost_priority": D("1.8e-07"),
    "cache_read_input_token_cost": D("3e-08"),
    "cache_read_input_token_cost_batches": D("3e-08"),
    "cache_read_input_token_cost_flex": D("3e-08"),
    "cache_read_input_token_cost_priority": D("5.4e-08"),
    "input_cost_per_audio_token": D("1e-06"),
    "input_cost_per_audio_token_flex": D("5e-07"),
    "input_cost_per_token": D("3e-07"),
    "litellm_provider": "gemini",
    "output_cost_per_reasoning_token": D("2.5e-06"),
    "output_cost_per_token": D("2.5e-06"),
    "search_context_cost_per_query": {
        "search_context_size_low": D("0.035"),
        "search_context_size_medium": D("0.035"),
        "search_context_size_high": D("0.035"),
    },
    "google_maps_grounding_cost_per_query": D("0.025"),
    "input_cost_per_audio_token_batches": D("5e-07"),
    "input_cost_per_audio_token_priority": D("1.8e-06"),
    "input_cost_per_token_batches": D("1.5e-07"),
    "input_cost_per_token_flex": D("1.5e-07"),
    "input_cost_per_token_priority": D("5.4e-07"),
    "output_cost_per_token_batches": D("1.25e-06"),
    "output_cost_per_token_flex": D("1.25e-06"),
    "output_cost_per_token_priority": D("4.5e-06"),
}
# dashscope/qwen3-coder-flash
QWEN3_CODER_FLASH: dict[str, Any] = {
    "litellm_provider": "dashscope",
    "tiered_pricing": [
        {
            "cache_read_input_token_cost": D("8e-08"),
            "input_cost_per_token": D("3e-07"),
            "output_cost_per_token": D("1.5e-06"),
            "range": [0, D("32000.0")],
        },
        {
            "cache_read_input_token_cost": D("1.2e-07"),
            "input_cost_per_token": D("5e-07"),
            "output_cost_per_token": D("2.5e-06"),
            "range": [D("32000.0"), D("128000.0")],
        },
        {
            "cache_read_input_token_cost": D("2e-07"),
            "input_cost_per_token": D("8e-07"),
            "output_cost_per_token": D("4e-06"),
            "range": [D("128000.0"), D("256000.0")],
        },
        {
            "cache_read_input_token_cost": D("4e-07"),
            "input_cost_per_token": D("1.6e-06"),
            "output_cost_per_token": D("9.6e-06"),
            "range": [D("256000.0"), D("1000000.0")],
        },
    ],
}
# deepseek-flash
DEEPSEEK_FLASH: dict[str, Any] = {
    "cache_creation_input_token_cost": D("0.0"),
    "cache_read_input_token_cost": D("6e-09"),
    "input_cost_per_token": D("3e-07"),
    "input_cost_per_token_cache_hit": D("6e-09"),
    "litellm_provider": "deepseek",
    "off_peak_pricing": {
        "cache_read_input_token_cost": D("3e-09"),
        "input_cost_per_token": D("1.5e-07"),
        "output_cost_per_token": D("6e-07"),
        "windows": [
            {
                "hours_utc": ["00:00-01:00", "04:00-06:00", "10:00-00:00"],
                "weekdays": [1, 2, 3, 4, 5],
            },
            {"hours_utc": "00:00-00:00", "weekdays": [6, 7]},
        ],
    },
    "output_cost_per_token": D("1.2e-06"),
}
# kyma/qwen3.7-flash
KYMA_QWEN3_7_FLASH: dict[str, Any] = {
    "input_cost_per_token": D("4.35e-08"),
    "cache_read_input_token_cost": D("8.1e-09"),
    "output_cost_per_token": D("1.886e-07"),
    "input_cost_per_token_above_32k_tokens": D("1.35e-07"),
    "output_cost_per_token_above_32k_tokens": D("5.4e-07"),
    "input_cost_per_token_above_256k_tokens": D("2.7e-07"),
    "output_cost_per_token_above_256k_tokens": D("1.08e-06"),
    "litellm_provider": "kyma",
}
# xai/grok-4.3
GROK_4_3: dict[str, Any] = {
    "cache_read_input_token_cost": D("2e-07"),
    "cache_read_input_token_cost_above_200k_tokens": D("4e-07"),
    "cache_read_input_token_cost_above_200k_tokens_batches": D("3.2e-07"),
    "cache_read_input_token_cost_batches": D("1.6e-07"),
    "input_cost_per_image_token": D("1.25e-06"),
    "input_cost_per_token": D("1.25e-06"),
    "input_cost_per_token_above_200k_tokens": D("2.5e-06"),
    "input_cost_per_token_above_200k_tokens_batches": D("2e-06"),
    "input_cost_per_token_batches": D("1e-06"),
    "litellm_provider": "xai",
    "output_cost_per_token": D("2.5e-06"),
    "output_cost_per_token_above_200k_tokens": D("5e-06"),
    "output_cost_per_token_above_200k_tokens_batches": D("4e-06"),
    "output_cost_per_token_batches": D("2e-06"),
}
# perplexity/sonar-medium-online
SONAR_MEDIUM_ONLINE: dict[str, Any] = {
    "input_cost_per_request": D("0.005"),
    "input_cost_per_token": 0,
    "litellm_provider": "perplexity",
    "output_cost_per_token": D("1.8e-06"),
}
# firecrawl/search (first four of its ten tiers)
FIRECRAWL_SEARCH: dict[str, Any] = {
    "litellm_provider": "firecrawl",
    "tiered_pricing": [
        {"input_cost_per_query": D("0.00166"), "max_results_range": [1, 10]},
        {"input_cost_per_query": D("0.00332"), "max_results_range": [11, 20]},
        {"input_cost_per_query": D("0.00498"), "max_results_range": [21, 30]},
        {"input_cost_per_query": D("0.00664"), "max_results_range": [31, 40]},
    ],
}

# An entry that prices every dimension the calculator knows, each at its own price.
EVERYTHING: dict[str, Any] = {
    "input_cost_per_token": D("1e-06"),
    "cache_read_input_token_cost": D("1e-07"),
    "cache_read_input_audio_token_cost": D("2e-07"),
    "cache_read_input_image_token_cost": D("5e-07"),
    "cache_creation_input_token_cost": D("1.25e-06"),
    "cache_creation_input_token_cost_above_1hr": D("2e-06"),
    "input_cost_per_audio_token": D("4e-06"),
    "input_cost_per_image_token": D("5e-06"),
    "input_cost_per_video_token": D("3e-06"),
    "output_cost_per_token": D("2e-06"),
    "output_cost_per_reasoning_token": D("3e-06"),
    "output_cost_per_audio_token": D("8e-06"),
    "output_cost_per_image_token": D("4e-05"),
    "output_cost_per_video_token": D("7e-06"),
    "output_cost_per_image": D("0.04"),
    "input_cost_per_image": D("0.0011"),
    "input_cost_per_pixel": D("1.9e-08"),
    "output_cost_per_pixel": D("2e-08"),
    "input_cost_per_request": D("0.005"),
    "cost_per_second": D("0.001902"),
    "input_cost_per_second": D("0.0001"),
    "output_cost_per_second": D("0.165025"),
    "input_cost_per_audio_per_second": D("0.00014"),
    "input_cost_per_video_per_second": D("0.0007"),
    "output_cost_per_video_per_second": D("0.5"),
    "input_cost_per_character": D("5e-06"),
    "output_cost_per_character": D("1.5e-05"),
    "input_cost_per_query": D("0.002"),
    "search_context_cost_per_query": {
        "search_context_size_low": D("0.025"),
        "search_context_size_medium": D("0.0275"),
        "search_context_size_high": D("0.03"),
    },
    "google_maps_grounding_cost_per_query": D("0.025"),
    "ocr_cost_per_page": D("0.001"),
    "annotation_cost_per_page": D("0.003"),
}


def price(
    entry: Mapping[str, Any] | CompiledPrices,
    *,
    tier: ServiceTier = "standard",
    at: datetime = WEDNESDAY_NOON,
    **counts: Any,
) -> PriceQuote:
    return price_call(entry, Usage(**counts), service_tier=tier, at=at)


def lines(quote: PriceQuote) -> dict[str, tuple[int, D, D]]:
    return {c.name: (c.quantity, c.unit_price, c.cost) for c in quote.components}


# --- tokens ---------------------------------------------------------------------------------


def test_input_and_output_tokens_are_priced_at_their_rates() -> None:
    quote = price(GPT_4O, input_tokens=1000, output_tokens=500)
    assert lines(quote) == {
        "input": (1000, D("2.5e-06"), D("0.0025")),  # 1000 × 0.0000025
        "output": (500, D("1e-05"), D("0.005")),  # 500 × 0.00001
    }
    assert quote.total == D("0.0075")
    assert quote.unpriced == ()
    assert quote.notes == ()


def test_cache_reads_and_writes_are_parts_of_the_input_priced_at_their_own_rates() -> None:
    quote = price(
        CLAUDE_SONNET_4_5,
        input_tokens=10_000,
        cache_read_tokens=5_000,
        cache_write_tokens=2_000,
        cache_write_1h_tokens=500,
        output_tokens=500,
    )
    assert lines(quote) == {
        "input": (3_000, D("3e-06"), D("0.009")),  # 10000 - 5000 - 2000 = 3000 × 0.000003
        "cache_read": (5_000, D("3e-07"), D("0.0015")),  # 5000 × 0.0000003
        "cache_write": (1_500, D("3.75e-06"), D("0.005625")),  # (2000 - 500) × 0.00000375
        "cache_write_1h": (500, D("6e-06"), D("0.003")),  # 500 × 0.000006
        "output": (500, D("1.5e-05"), D("0.0075")),  # 500 × 0.000015
    }
    assert quote.total == D("0.026625")  # 0.009 + 0.0015 + 0.005625 + 0.003 + 0.0075
    assert quote.notes == ()


def test_cache_tokens_without_a_cache_rate_are_priced_at_the_input_rate_and_say_so() -> None:
    entry = {"input_cost_per_token": D("0.000002"), "output_cost_per_token": D("0.00001")}
    quote = price(entry, input_tokens=1000, cache_read_tokens=300, cache_write_tokens=200)
    assert lines(quote) == {
        "input": (500, D("0.000002"), D("0.001")),  # 500 × 0.000002
        "cache_read": (300, D("0.000002"), D("0.0006")),  # 300 × 0.000002
        "cache_write": (200, D("0.000002"), D("0.0004")),  # 200 × 0.000002
    }
    assert quote.total == D("0.002")  # the same as 1000 uncached input tokens
    assert quote.notes == (
        "no cache_read price; input price used",
        "no cache_write price; input price used",
    )


def test_one_hour_cache_writes_without_their_rate_are_priced_as_cache_writes() -> None:
    entry = {
        "input_cost_per_token": D("0.000003"),
        "cache_creation_input_token_cost": D("0.00000375"),
    }
    quote = price(entry, input_tokens=1000, cache_write_tokens=400, cache_write_1h_tokens=100)
    assert lines(quote) == {
        "input": (600, D("0.000003"), D("0.0018")),  # 600 × 0.000003
        "cache_write": (300, D("0.00000375"), D("0.001125")),  # 300 × 0.00000375
        "cache_write_1h": (100, D("0.00000375"), D("0.000375")),  # 100 × 0.00000375
    }
    assert quote.total == D("0.0033")
    assert quote.notes == ("no cache_write_1h price; cache_write price used",)


def test_fireworks_bills_cached_input_at_half_the_input_price_when_no_rate_is_given() -> None:
    entry = {
        "litellm_provider": "fireworks_ai",
        "input_cost_per_token": D("9e-07"),
        "output_cost_per_token": D("9e-07"),
    }
    quote = price(entry, input_tokens=10_000, cache_read_tokens=4_000, output_tokens=100)
    assert lines(quote) == {
        "input": (6_000, D("9e-07"), D("0.0054")),  # 6000 × 0.0000009
        "cache_read": (4_000, D("4.5e-07"), D("0.0018")),  # 4000 × (0.0000009 × 0.5)
        "output": (100, D("9e-07"), D("0.00009")),  # 100 × 0.0000009
    }
    assert quote.total == D("0.00729")
    assert quote.notes == (
        "no cache_read price; fireworks_ai bills cached input at 50% of the input price",
    )


def test_the_deepseek_cache_hit_alias_prices_cache_reads_when_it_is_the_only_rate() -> None:
    entry = {"input_cost_per_token": D("3e-07"), "input_cost_per_token_cache_hit": D("6e-09")}
    quote = price(entry, input_tokens=1000, cache_read_tokens=100)
    assert lines(quote)["cache_read"] == (100, D("6e-09"), D("6e-07"))  # 100 × 0.000000006
    assert quote.total == D("0.0002706")  # 900 × 0.0000003 = 0.00027, + 0.0000006


def test_reasoning_is_part_of_the_output_priced_at_its_own_rate() -> None:
    entry = {
        "input_cost_per_token": D("1e-06"),
        "output_cost_per_token": D("4e-06"),
        "output_cost_per_reasoning_token": D("3.5e-06"),
    }
    quote = price(entry, output_tokens=1000, reasoning_tokens=600)
    assert lines(quote) == {
        "output": (400, D("4e-06"), D("0.0016")),  # 400 × 0.000004
        "reasoning": (600, D("3.5e-06"), D("0.0021")),  # 600 × 0.0000035
    }
    assert quote.total == D("0.0037")
    assert quote.notes == ()


def test_reasoning_without_its_own_rate_is_priced_at_the_output_rate() -> None:
    quote = price(GPT_4O, output_tokens=1000, reasoning_tokens=600)
    assert lines(quote) == {
        "output": (400, D("1e-05"), D("0.004")),  # 400 × 0.00001
        "reasoning": (600, D("1e-05"), D("0.006")),  # 600 × 0.00001
    }
    assert quote.total == D("0.01")
    assert quote.notes == ("no reasoning price; output price used",)


def test_audio_tokens_and_cached_audio_are_parts_of_the_input() -> None:
    usage: dict[str, Any] = {
        "input_tokens": 10_000,
        "input_audio_tokens": 3_000,
        "cache_read_tokens": 2_000,
        "cache_read_audio_tokens": 500,
        "output_tokens": 100,
    }
    quote = price(GEMINI_2_5_FLASH, **usage)
    assert lines(quote) == {
        "input": (5_500, D("3e-07"), D("0.00165")),  # 10000 - 2000 - (3000 - 500) = 5500
        "cache_read": (1_500, D("3e-08"), D("0.000045")),  # 2000 - 500 = 1500 × 0.00000003
        "cache_read_audio": (500, D("1e-07"), D("0.00005")),  # 500 × 0.0000001
        "input_audio": (2_500, D("1e-06"), D("0.0025")),  # 3000 - 500 = 2500 × 0.000001
        "output": (100, D("2.5e-06"), D("0.00025")),  # 100 × 0.0000025
    }
    assert quote.total == D("0.004495")
    flex = price(GEMINI_2_5_FLASH, tier="flex", **usage)
    assert lines(flex) == {
        "input": (5_500, D("1.5e-07"), D("0.000825")),  # 5500 × 0.00000015
        "cache_read": (1_500, D("3e-08"), D("0.000045")),  # 1500 × 0.00000003
        "cache_read_audio": (500, D("1e-07"), D("0.00005")),  # 500 × 0.0000001
        "input_audio": (2_500, D("5e-07"), D("0.00125")),  # 2500 × 0.0000005
        "output": (100, D("1.25e-06"), D("0.000125")),  # 100 × 0.00000125
    }
    assert flex.total == D("0.002295")
    assert flex.notes == ()


def test_output_audio_is_part_of_the_output_priced_at_its_own_rate() -> None:
    entry = {
        "input_cost_per_token": D("2.5e-06"),
        "output_cost_per_token": D("1e-05"),
        "input_cost_per_audio_token": D("4e-05"),
        "output_cost_per_audio_token": D("8e-05"),
    }
    quote = price(
        entry, input_tokens=100, input_audio_tokens=40, output_tokens=1000, output_audio_tokens=250
    )
    assert lines(quote) == {
        "input": (60, D("2.5e-06"), D("0.00015")),  # 60 × 0.0000025
        "input_audio": (40, D("4e-05"), D("0.0016")),  # 40 × 0.00004
        "output": (750, D("1e-05"), D("0.0075")),  # 750 × 0.00001
        "output_audio": (250, D("8e-05"), D("0.02")),  # 250 × 0.00008
    }
    assert quote.total == D("0.02925")


def test_audio_without_audio_rates_is_priced_as_ordinary_tokens_and_says_so() -> None:
    quote = price(
        GPT_4O,
        input_tokens=1000,
        cache_read_tokens=200,
        input_audio_tokens=100,
        cache_read_audio_tokens=50,
        output_tokens=10,
        output_audio_tokens=5,
    )
    assert lines(quote) == {
        "input": (750, D("2.5e-06"), D("0.001875")),  # 1000 - 200 - (100 - 50) = 750
        "cache_read": (150, D("1.25e-06"), D("0.0001875")),  # 200 - 50 = 150 × 0.00000125
        "cache_read_audio": (50, D("1.25e-06"), D("0.0000625")),  # at the cache read rate
        "input_audio": (50, D("2.5e-06"), D("0.000125")),  # at the input rate
        "output": (5, D("1e-05"), D("0.00005")),
        "output_audio": (5, D("1e-05"), D("0.00005")),  # at the output rate
    }
    assert quote.total == D("0.00235")  # 0.001875 + 0.0001875 + 0.0000625 + 0.000125 + 0.0001
    assert quote.notes == (
        "no cache_read_audio price; cache_read price used",
        "no input_audio price; input price used",
        "no output_audio price; output price used",
    )


def test_image_and_video_tokens_are_parts_of_input_and_output() -> None:
    quote = price(
        EVERYTHING,
        input_tokens=10_000,
        input_image_tokens=4_000,
        cache_read_tokens=3_000,
        cache_read_image_tokens=1_000,
        input_video_tokens=2_000,
        output_tokens=5_000,
        output_image_tokens=1_290,
        output_video_tokens=10,
        requests=0,
    )
    assert lines(quote) == {
        "input": (2_000, D("1e-06"), D("0.002")),  # 10000 - 3000 - (4000 - 1000) - 2000
        "cache_read": (2_000, D("1e-07"), D("0.0002")),  # 3000 - 1000
        "cache_read_image": (1_000, D("5e-07"), D("0.0005")),
        "input_image": (3_000, D("5e-06"), D("0.015")),  # 4000 - 1000
        "input_video": (2_000, D("3e-06"), D("0.006")),
        "output": (3_700, D("2e-06"), D("0.0074")),  # 5000 - 1290 - 10
        "output_image": (1_290, D("4e-05"), D("0.0516")),
        "output_video": (10, D("7e-06"), D("0.00007")),
    }
    # 0.002 + 0.0002 + 0.0005 + 0.015 + 0.006 + 0.0074 + 0.0516 + 0.00007
    assert quote.total == D("0.08277")


# --- other dimensions -----------------------------------------------------------------------


def test_every_counted_dimension_is_priced_by_its_own_price() -> None:
    quote = price(
        EVERYTHING,
        images=2,
        input_images=3,
        input_pixels=1_048_576,
        output_pixels=2_097_152,
        requests=2,
        seconds=30,
        input_seconds=60,
        output_seconds=5,
        input_audio_seconds=12,
        input_video_seconds=8,
        output_video_seconds=4,
        input_characters=1000,
        output_characters=200,
        queries=3,
        web_searches=2,
        search_context_size="high",
        maps_grounding_queries=1,
        pages=10,
        annotated_pages=4,
    )
    assert lines(quote) == {
        "images": (2, D("0.04"), D("0.08")),
        "input_images": (3, D("0.0011"), D("0.0033")),
        "input_pixels": (1_048_576, D("1.9e-08"), D("0.019922944")),  # 1048576 × 19e-9
        "output_pixels": (2_097_152, D("2e-08"), D("0.04194304")),  # 2097152 × 2e-8
        "requests": (2, D("0.005"), D("0.01")),
        "seconds": (30, D("0.001902"), D("0.05706")),
        "input_seconds": (60, D("0.0001"), D("0.006")),
        "output_seconds": (5, D("0.165025"), D("0.825125")),
        "input_audio_seconds": (12, D("0.00014"), D("0.00168")),
        "input_video_seconds": (8, D("0.0007"), D("0.0056")),
        "output_video_seconds": (4, D("0.5"), D("2.0")),
        "input_characters": (1000, D("5e-06"), D("0.005")),
        "output_characters": (200, D("1.5e-05"), D("0.003")),
        "queries": (3, D("0.002"), D("0.006")),
        "web_searches": (2, D("0.03"), D("0.06")),  # the "high" search context price
        "maps_grounding_queries": (1, D("0.025"), D("0.025")),
        "pages": (10, D("0.001"), D("0.01")),
        "annotated_pages": (4, D("0.003"), D("0.012")),
    }
    # 0.08 + 0.0033 + 0.019922944 + 0.04194304 + 0.01 + 0.05706 + 0.006 + 0.825125 + 0.00168
    # + 0.0056 + 2.0 + 0.005 + 0.003 + 0.006 + 0.06 + 0.025 + 0.01 + 0.012
    assert quote.total == D("3.171630984")
    assert quote.unpriced == ()


@pytest.mark.parametrize(
    ("size", "unit_price", "cost"),
    [
        ("low", D("0.025"), D("0.075")),  # 3 × 0.025
        ("medium", D("0.0275"), D("0.0825")),  # 3 × 0.0275
        ("high", D("0.03"), D("0.09")),  # 3 × 0.03
    ],
)
def test_web_searches_are_priced_by_search_context_size(size: str, unit_price: D, cost: D) -> None:
    quote = price(EVERYTHING, web_searches=3, search_context_size=size, requests=0)
    assert lines(quote) == {"web_searches": (3, unit_price, cost)}


def test_search_context_size_defaults_to_medium() -> None:
    quote = price(EVERYTHING, web_searches=1, requests=0)
    assert lines(quote) == {"web_searches": (1, D("0.0275"), D("0.0275"))}


def test_a_per_request_fee_is_added_and_a_zero_price_is_a_real_zero() -> None:
    quote = price(SONAR_MEDIUM_ONLINE, input_tokens=1000, output_tokens=100, requests=1)
    assert lines(quote) == {
        "input": (1000, D(0), D(0)),  # priced, at 0
        "output": (100, D("1.8e-06"), D("0.00018")),  # 100 × 0.0000018
        "requests": (1, D("0.005"), D("0.005")),
    }
    assert quote.total == D("0.00518")
    assert quote.unpriced == ()


def test_requests_left_out_are_0_like_every_count_so_no_per_request_fee() -> None:
    # Omitted usage fields are 0. LiteLLM's cost_per_token agrees: it adds no
    # input_cost_per_request for a chat call (bench/agreement.py compares them).
    quote = price(SONAR_MEDIUM_ONLINE, input_tokens=1000, output_tokens=100)
    assert lines(quote) == {
        "input": (1000, D(0), D(0)),
        "output": (100, D("1.8e-06"), D("0.00018")),
    }
    assert quote.total == D("0.00018")
    assert quote.unpriced == ()
    assert Usage().requests == 0


def test_a_model_without_a_per_request_fee_charges_nothing_per_request() -> None:
    quote = price(GPT_4O, input_tokens=1000, requests=3)
    assert [c.name for c in quote.components] == ["input"]
    assert quote.unpriced == ()
    assert quote.total == D("0.0025")


def test_a_zero_price_off_the_entry_is_counted_at_zero() -> None:
    # Wednesday 02:00 UTC is peak time for deepseek-flash.
    at = datetime(2025, 1, 8, 2, 0, tzinfo=UTC)
    quote = price(
        DEEPSEEK_FLASH, at=at, input_tokens=1000, cache_write_tokens=100, output_tokens=10
    )
    assert lines(quote) == {
        "input": (900, D("3e-07"), D("0.00027")),  # 900 × 0.0000003
        "cache_write": (100, D("0.0"), D(0)),  # a real price of 0
        "output": (10, D("1.2e-06"), D("0.000012")),
    }
    assert quote.total == D("0.000282")
    assert quote.unpriced == ()
    assert quote.notes == ()


# --- unpriced -------------------------------------------------------------------------------


def test_dimensions_without_a_price_are_unpriced_never_zero() -> None:
    quote = price(GPT_4O, input_tokens=1000, output_tokens=500, images=2, pages=1, web_searches=1)
    assert quote.unpriced == ("images", "web_searches", "pages")
    assert quote.total == D("0.0075")  # the priced part only
    assert {c.name for c in quote.components} == {"input", "output"}


def test_tokens_on_a_model_priced_per_image_are_unpriced() -> None:
    quote = price({"output_cost_per_image": D("0.04")}, input_tokens=50, images=1)
    assert lines(quote) == {"images": (1, D("0.04"), D("0.04"))}
    assert quote.unpriced == ("input",)
    assert quote.total == D("0.04")


def test_a_fallback_to_a_missing_price_is_unpriced_too() -> None:
    quote = price(
        {"output_cost_per_token": D("1e-06")},
        input_tokens=100,
        cache_read_tokens=50,
        output_tokens=10,
    )
    assert quote.unpriced == ("input", "cache_read")
    assert lines(quote) == {"output": (10, D("1e-06"), D("0.00001"))}
    assert quote.total == D("0.00001")


def test_values_that_are_not_prices_are_reported_and_left_unpriced() -> None:
    entry = {
        "input_cost_per_token": "3e-7",
        "output_cost_per_token": D("-1e-06"),
        "output_cost_per_reasoning_token": True,
        "cache_read_input_token_cost": None,
    }
    compiled = compile_entry(entry)
    assert compiled.invalid_fields == (
        "input_cost_per_token",
        "output_cost_per_reasoning_token",
        "output_cost_per_token",
    )
    quote = price(compiled, input_tokens=10, output_tokens=10, reasoning_tokens=5)
    assert quote.unpriced == ("input", "output", "reasoning")
    assert quote.total == D(0)


def test_a_float_price_is_refused() -> None:
    with pytest.raises(TypeError, match="float_hook"):
        compile_entry({"input_cost_per_token": 3e-07})


# --- service tiers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        # input 80000, cache_read 20000, output 3000
        (
            "standard",
            {
                "input": (80_000, D("2.5e-06"), D("0.2")),
                "cache_read": (20_000, D("2.5e-07"), D("0.005")),
                "output": (3_000, D("1.5e-05"), D("0.045")),
            },
        ),
        (
            "batch",
            {
                "input": (80_000, D("1.25e-06"), D("0.1")),
                "cache_read": (20_000, D("1.3e-07"), D("0.0026")),
                "output": (3_000, D("7.5e-06"), D("0.0225")),
            },
        ),
        (
            "priority",
            {
                "input": (80_000, D("5e-06"), D("0.4")),
                "cache_read": (20_000, D("5e-07"), D("0.01")),
                "output": (3_000, D("3e-05"), D("0.09")),
            },
        ),
        (
            "flex",
            {
                "input": (80_000, D("1.25e-06"), D("0.1")),
                "cache_read": (20_000, D("1.3e-07"), D("0.0026")),
                "output": (3_000, D("7.5e-06"), D("0.0225")),
            },
        ),
    ],
)
def test_a_service_tier_picks_its_own_prices(
    tier: ServiceTier, expected: dict[str, tuple[int, D, D]]
) -> None:
    quote = price(
        GPT_5_4, tier=tier, input_tokens=100_000, cache_read_tokens=20_000, output_tokens=3_000
    )
    assert lines(quote) == expected
    assert quote.notes == ()


@pytest.mark.parametrize(
    ("tier", "total"),
    [
        ("standard", D("0.25")),
        ("batch", D("0.1251")),
        ("priority", D("0.5")),
        ("flex", D("0.1251")),
    ],
)
def test_service_tier_totals(tier: ServiceTier, total: D) -> None:
    # standard 0.2 + 0.005 + 0.045; batch and flex 0.1 + 0.0026 + 0.0225; priority 0.4 + 0.01 + 0.09
    quote = price(
        GPT_5_4, tier=tier, input_tokens=100_000, cache_read_tokens=20_000, output_tokens=3_000
    )
    assert quote.total == total


def test_a_service_tier_the_model_lacks_uses_standard_prices_and_says_so() -> None:
    quote = price(CLAUDE_SONNET_4_5, tier="priority", input_tokens=1000, output_tokens=100)
    assert lines(quote) == {
        "input": (1000, D("3e-06"), D("0.003")),
        "output": (100, D("1.5e-05"), D("0.0015")),
    }
    assert quote.total == D("0.0045")
    assert quote.notes == (
        "service tier 'priority' has no prices for this model; standard prices used",
    )


def test_a_service_tier_that_lacks_some_prices_names_them() -> None:
    quote = price(
        CLAUDE_SONNET_4_5,
        tier="batch",
        input_tokens=1000,
        cache_write_tokens=200,
        cache_write_1h_tokens=100,
        output_tokens=100,
    )
    assert lines(quote) == {
        "input": (800, D("1.5e-06"), D("0.0012")),
        "cache_write": (100, D("1.875e-06"), D("0.0001875")),
        "cache_write_1h": (100, D("6e-06"), D("0.0006")),  # no batch price: standard
        "output": (100, D("7.5e-06"), D("0.00075")),
    }
    assert quote.total == D("0.0027375")
    assert quote.notes == (
        "service tier 'batch' has no prices for cache_write_1h; standard prices used",
    )


def test_reasoning_in_a_service_tier_without_a_reasoning_price_uses_its_output_price() -> None:
    entry = {
        "input_cost_per_token": D("1e-06"),
        "output_cost_per_token": D("4e-06"),
        "output_cost_per_token_priority": D("8e-06"),
        "output_cost_per_reasoning_token": D("3e-06"),
    }
    priority = price(entry, tier="priority", output_tokens=1000, reasoning_tokens=400)
    assert lines(priority) == {
        "output": (600, D("8e-06"), D("0.0048")),
        "reasoning": (400, D("8e-06"), D("0.0032")),  # the priority output price
    }
    assert priority.total == D("0.008")
    assert priority.notes == (
        "service tier 'priority' has no reasoning price; its output price used",
    )
    standard = price(entry, output_tokens=1000, reasoning_tokens=400)
    assert standard.total == D("0.0036")  # 600 × 0.000004 + 400 × 0.000003


def test_an_unknown_service_tier_is_refused() -> None:
    with pytest.raises(InvalidCall, match="unknown service tier 'turbo'"):
        price_call(GPT_4O, Usage(input_tokens=1), service_tier="turbo", at=WEDNESDAY_NOON)  # type: ignore[arg-type]


# --- long context ---------------------------------------------------------------------------


def test_at_the_threshold_the_base_prices_apply() -> None:
    quote = price(
        GEMINI_2_5_PRO, input_tokens=200_000, cache_read_tokens=50_000, output_tokens=1000
    )
    assert lines(quote) == {
        "input": (150_000, D("1.25e-06"), D("0.1875")),
        "cache_read": (50_000, D("1.25e-07"), D("0.00625")),
        "output": (1000, D("1e-05"), D("0.01")),
    }
    assert quote.total == D("0.20375")
    assert quote.notes == ()


def test_one_token_above_the_threshold_the_long_context_prices_apply_to_the_whole_request() -> None:
    quote = price(
        GEMINI_2_5_PRO, input_tokens=200_001, cache_read_tokens=50_000, output_tokens=1000
    )
    assert lines(quote) == {
        "input": (150_001, D("2.5e-06"), D("0.3750025")),  # 150001 × 0.0000025
        "cache_read": (50_000, D("2.5e-07"), D("0.0125")),  # 50000 × 0.00000025
        "output": (1000, D("1.5e-05"), D("0.015")),  # 1000 × 0.000015
    }
    assert quote.total == D("0.4025025")
    assert quote.notes == (
        "long-context prices above 200k tokens applied (input_tokens 200001 > 200000)",
    )


def test_long_context_and_service_tier_combine() -> None:
    quote = price(
        GEMINI_2_5_PRO,
        tier="priority",
        input_tokens=200_001,
        cache_read_tokens=50_000,
        output_tokens=1000,
    )
    assert lines(quote) == {
        "input": (150_001, D("4.5e-06"), D("0.6750045")),  # 150001 × 0.0000045
        "cache_read": (50_000, D("4.5e-07"), D("0.0225")),  # 50000 × 0.00000045
        "output": (1000, D("2.7e-05"), D("0.027")),  # 1000 × 0.000027
    }
    assert quote.total == D("0.7245045")


def test_a_missing_long_context_service_price_falls_back_to_the_standard_long_context_one() -> None:
    quote = price(
        GEMINI_2_5_PRO,
        tier="flex",
        input_tokens=200_001,
        cache_read_tokens=50_000,
        output_tokens=1000,
    )
    assert lines(quote) == {
        "input": (150_001, D("1.25e-06"), D("0.18750125")),  # 150001 × 0.00000125 (flex)
        "cache_read": (50_000, D("2.5e-07"), D("0.0125")),  # standard long-context price
        "output": (1000, D("7.5e-06"), D("0.0075")),  # flex long-context price
    }
    assert quote.total == D("0.20750125")
    assert quote.notes == (
        "long-context prices above 200k tokens applied (input_tokens 200001 > 200000)",
        "service tier 'flex' has no prices for cache_read; standard prices used",
    )


def test_gpt_5_4_batch_above_272k() -> None:
    quote = price(
        GPT_5_4, tier="batch", input_tokens=300_000, cache_read_tokens=100_000, output_tokens=2000
    )
    assert lines(quote) == {
        "input": (200_000, D("2.5e-06"), D("0.5")),  # 200000 × 0.0000025
        "cache_read": (100_000, D("2.5e-07"), D("0.025")),  # 100000 × 0.00000025
        "output": (2000, D("1.125e-05"), D("0.0225")),  # 2000 × 0.00001125
    }
    assert quote.total == D("0.5475")


# anthropic.claude-sonnet-4-5-20250929-v1:0 (Bedrock): batch prices, but none above 200k
BEDROCK_CLAUDE_SONNET_4_5: dict[str, Any] = {
    "cache_creation_input_token_cost": D("3.75e-06"),
    "cache_creation_input_token_cost_above_1hr": D("6e-06"),
    "cache_creation_input_token_cost_above_1hr_above_200k_tokens": D("1.2e-05"),
    "cache_creation_input_token_cost_above_200k_tokens": D("7.5e-06"),
    "cache_read_input_token_cost": D("3e-07"),
    "cache_read_input_token_cost_above_200k_tokens": D("6e-07"),
    "input_cost_per_token": D("3e-06"),
    "input_cost_per_token_above_200k_tokens": D("6e-06"),
    "input_cost_per_token_batches": D("1.5e-06"),
    "litellm_provider": "bedrock_converse",
    "output_cost_per_token": D("1.5e-05"),
    "output_cost_per_token_above_200k_tokens": D("2.25e-05"),
    "output_cost_per_token_batches": D("7.5e-06"),
}


@pytest.mark.parametrize(
    ("input_tokens", "total", "notes"),
    [
        # 200000 × 0.0000015 + 1000 × 0.0000075
        (200_000, D("0.3075"), ()),
        # 200001 × 0.0000015 + 1000 × 0.0000075: LiteLLM's batch_cost_calculator says the same
        (
            200_001,
            D("0.3075015"),
            (
                "no batch price above 200k tokens for input, output; batch prices below it "
                "used, as LiteLLM bills batch (input_tokens 200001 > 200000)",
            ),
        ),
    ],
)
def test_batch_above_a_threshold_without_batch_long_context_prices_keeps_the_batch_prices(
    input_tokens: int, total: D, notes: tuple[str, ...]
) -> None:
    # LiteLLM (get_batch_cost_rates) bills batch at the flat _batches price unless the entry has
    # a batch long-context price: never at the standard long-context price (1.2225060 here).
    quote = price(
        BEDROCK_CLAUDE_SONNET_4_5, tier="batch", input_tokens=input_tokens, output_tokens=1000
    )
    assert lines(quote) == {
        "input": (input_tokens, D("1.5e-06"), input_tokens * D("1.5e-06")),
        "output": (1000, D("7.5e-06"), D("0.0075")),
    }
    assert quote.total == total
    assert quote.notes == notes


def test_batch_above_a_threshold_uses_standard_long_context_prices_only_where_batch_has_none() -> (
    None
):
    quote = price(
        BEDROCK_CLAUDE_SONNET_4_5,
        tier="batch",
        input_tokens=200_001,
        cache_read_tokens=50_000,
        output_tokens=1000,
    )
    assert lines(quote) == {
        "input": (150_001, D("1.5e-06"), D("0.2250015")),  # 150001 × 0.0000015 (batch)
        "cache_read": (50_000, D("6e-07"), D("0.03")),  # no batch price: standard above 200k
        "output": (1000, D("7.5e-06"), D("0.0075")),  # batch
    }
    assert quote.total == D("0.2625015")  # LiteLLM's batch_cost_calculator: 0.2625015
    assert quote.notes == (
        "long-context prices above 200k tokens applied (input_tokens 200001 > 200000)",
        "no long-context price above 200k tokens for input, output; lower-tier prices used",
        "service tier 'batch' has no prices for cache_read; standard prices used",
    )


def test_batch_uses_its_price_for_the_highest_threshold_crossed_that_it_has() -> None:
    entry = {
        "input_cost_per_token": D("1e-06"),
        "input_cost_per_token_above_128k_tokens": D("2e-06"),
        "input_cost_per_token_above_256k_tokens": D("4e-06"),
        "input_cost_per_token_batches": D("5e-07"),
        "input_cost_per_token_above_128k_tokens_batches": D("1e-06"),
    }
    quote = price(entry, tier="batch", input_tokens=300_000)
    assert lines(quote) == {"input": (300_000, D("1e-06"), D("0.3"))}  # 300000 × 0.000001
    assert quote.notes == (
        "long-context prices above 128k tokens applied (input_tokens 300000 > 128000)",
    )


def test_batch_without_batch_prices_uses_the_standard_long_context_price() -> None:
    entry = {
        "input_cost_per_token": D("1e-06"),
        "input_cost_per_token_above_200k_tokens": D("2e-06"),
    }
    quote = price(entry, tier="batch", input_tokens=200_001)
    assert lines(quote) == {"input": (200_001, D("2e-06"), D("0.400002"))}
    assert quote.notes == (
        "long-context prices above 200k tokens applied (input_tokens 200001 > 200000)",
        "service tier 'batch' has no prices for this model; standard prices used",
    )


def test_priority_above_272k_without_long_context_priority_prices_names_the_dimensions() -> None:
    quote = price(GPT_5_4, tier="priority", input_tokens=272_001, output_tokens=100)
    assert lines(quote) == {
        "input": (272_001, D("5e-06"), D("1.360005")),  # 272001 × 0.000005
        "output": (100, D("2.25e-05"), D("0.00225")),  # 100 × 0.0000225
    }
    assert quote.total == D("1.362255")
    assert quote.notes == (
        "long-context prices above 272k tokens applied (input_tokens 272001 > 272000)",
        "service tier 'priority' has no prices for input, output; standard prices used",
    )


@pytest.mark.parametrize(
    ("input_tokens", "input_line", "output_line", "total"),
    [
        # 32000 × 0.0000000435 = 0.001392; 1000 × 0.0000001886 = 0.0001886
        (32_000, (32_000, D("4.35e-08"), D("0.001392")), (1000, D("1.886e-07"), D("0.0001886")),
         D("0.0015806")),
        # 32001 × 0.000000135 = 0.004320135; 1000 × 0.00000054 = 0.00054
        (32_001, (32_001, D("1.35e-07"), D("0.004320135")), (1000, D("5.4e-07"), D("0.00054")),
         D("0.004860135")),
        # 256000 × 0.000000135 = 0.03456; 1000 × 0.00000054 = 0.00054
        (256_000, (256_000, D("1.35e-07"), D("0.03456")), (1000, D("5.4e-07"), D("0.00054")),
         D("0.0351")),
        # 256001 × 0.00000027 = 0.06912027; 1000 × 0.00000108 = 0.00108
        (256_001, (256_001, D("2.7e-07"), D("0.06912027")), (1000, D("1.08e-06"), D("0.00108")),
         D("0.07020027")),
    ],
)  # fmt: skip
def test_the_highest_threshold_passed_wins(
    input_tokens: int,
    input_line: tuple[int, D, D],
    output_line: tuple[int, D, D],
    total: D,
) -> None:
    quote = price(KYMA_QWEN3_7_FLASH, input_tokens=input_tokens, output_tokens=1000)
    assert lines(quote) == {"input": input_line, "output": output_line}
    assert quote.total == total


def test_a_dimension_without_a_long_context_price_keeps_its_own_and_says_so() -> None:
    quote = price(
        KYMA_QWEN3_7_FLASH, input_tokens=256_001, cache_read_tokens=1000, output_tokens=1000
    )
    assert lines(quote) == {
        "input": (255_001, D("2.7e-07"), D("0.06885027")),  # 255001 × 0.00000027
        "cache_read": (1000, D("8.1e-09"), D("0.0000081")),  # 1000 × 0.0000000081
        "output": (1000, D("1.08e-06"), D("0.00108")),
    }
    assert quote.total == D("0.06993837")  # 0.06885027 + 0.0000081 + 0.00108
    assert quote.notes == (
        "long-context prices above 256k tokens applied (input_tokens 256001 > 256000)",
        "no long-context price above 256k tokens for cache_read; lower-tier prices used",
    )


def test_a_cache_write_rate_that_exists_only_above_the_threshold() -> None:
    below = price(GEMINI_2_5_PRO, input_tokens=1000, cache_write_tokens=100)
    assert lines(below)["cache_write"] == (100, D("1.25e-06"), D("0.000125"))  # input price
    assert below.notes == ("no cache_write price; input price used",)
    above = price(GEMINI_2_5_PRO, input_tokens=200_100, cache_write_tokens=100)
    assert lines(above)["cache_write"] == (100, D("2.5e-07"), D("0.000025"))


def test_xai_bills_long_context_once_the_prompt_reaches_the_threshold() -> None:
    below = price(GROK_4_3, input_tokens=199_999, output_tokens=100)
    assert lines(below) == {
        "input": (199_999, D("1.25e-06"), D("0.24999875")),
        "output": (100, D("2.5e-06"), D("0.00025")),
    }
    assert below.total == D("0.25024875")
    at = price(GROK_4_3, input_tokens=200_000, output_tokens=100)
    assert lines(at) == {
        "input": (200_000, D("2.5e-06"), D("0.5")),
        "output": (100, D("5e-06"), D("0.0005")),
    }
    assert at.total == D("0.5005")
    assert at.notes == (
        "long-context prices above 200k tokens applied (input_tokens 200000 >= 200000)",
    )


def test_a_threshold_priced_only_for_another_service_tier_does_not_apply() -> None:
    entry = {
        "input_cost_per_token": D("1e-06"),
        "output_cost_per_token": D("2e-06"),
        "input_cost_per_token_above_200k_tokens_priority": D("4e-06"),
    }
    standard = price(entry, input_tokens=300_000, output_tokens=10)
    assert standard.total == D("0.30002")  # 300000 × 0.000001 + 10 × 0.000002
    assert standard.notes == ()
    priority = price(entry, tier="priority", input_tokens=300_000, output_tokens=10)
    assert lines(priority) == {
        "input": (300_000, D("4e-06"), D("1.2")),
        "output": (10, D("2e-06"), D("0.00002")),
    }
    assert priority.total == D("1.20002")
    assert priority.notes == (
        "long-context prices above 200k tokens applied (input_tokens 300000 > 200000)",
        "no long-context price above 200k tokens for output; lower-tier prices used",
        "service tier 'priority' has no prices for output; standard prices used",
    )


# --- tiered_pricing -------------------------------------------------------------------------


def test_tiered_pricing_ranges_include_their_end() -> None:
    quote = price(
        QWEN3_CODER_FLASH, input_tokens=32_000, cache_read_tokens=2_000, output_tokens=100
    )
    assert lines(quote) == {
        "input": (30_000, D("3e-07"), D("0.009")),  # 30000 × 0.0000003
        "cache_read": (2_000, D("8e-08"), D("0.00016")),  # 2000 × 0.00000008
        "output": (100, D("1.5e-06"), D("0.00015")),  # 100 × 0.0000015
    }
    assert quote.total == D("0.00931")
    assert quote.notes == ("tiered_pricing range (0, 32000] applied for 32000 input tokens",)


def test_one_token_past_a_range_moves_the_whole_request_to_the_next_tier() -> None:
    quote = price(
        QWEN3_CODER_FLASH, input_tokens=32_001, cache_read_tokens=2_000, output_tokens=100
    )
    assert lines(quote) == {
        "input": (30_001, D("5e-07"), D("0.0150005")),  # 30001 × 0.0000005
        "cache_read": (2_000, D("1.2e-07"), D("0.00024")),  # 2000 × 0.00000012
        "output": (100, D("2.5e-06"), D("0.00025")),  # 100 × 0.0000025
    }
    assert quote.total == D("0.0154905")
    assert quote.notes == ("tiered_pricing range (32000, 128000] applied for 32001 input tokens",)


def test_past_the_last_range_the_last_tier_applies() -> None:
    quote = price(QWEN3_CODER_FLASH, input_tokens=2_000_000)
    assert lines(quote) == {"input": (2_000_000, D("1.6e-06"), D("3.2"))}


def test_an_empty_prompt_is_priced_in_the_first_tier() -> None:
    quote = price(QWEN3_CODER_FLASH, output_tokens=100)
    assert lines(quote) == {"output": (100, D("1.5e-06"), D("0.00015"))}


def test_a_tier_without_a_cache_write_price_bills_cache_writes_at_its_input_price() -> None:
    quote = price(QWEN3_CODER_FLASH, input_tokens=50_000, cache_write_tokens=10_000)
    assert lines(quote) == {
        "input": (40_000, D("5e-07"), D("0.02")),
        "cache_write": (10_000, D("5e-07"), D("0.005")),
    }
    assert quote.total == D("0.025")
    assert quote.notes == (
        "no cache_write price; input price used",
        "tiered_pricing range (32000, 128000] applied for 50000 input tokens",
    )


def test_a_tier_bills_cache_reads_it_does_not_price_at_its_own_input_price() -> None:
    # The flat cache price belongs to the base context; one request never mixes tiers. A tier
    # without an output price keeps the entry's output price rather than billing output free.
    entry = {
        "input_cost_per_token": D("1e-06"),
        "cache_read_input_token_cost": D("1e-07"),
        "output_cost_per_token": D("3e-06"),
        "tiered_pricing": [
            {"input_cost_per_token": D("1e-06"), "range": [0, 1000]},
            {"input_cost_per_token": D("2e-06"), "output_cost_per_token": D("4e-06"),
             "range": [1000, 5000]},
        ],
    }  # fmt: skip
    high = price(entry, input_tokens=2000, cache_read_tokens=500, output_tokens=10)
    assert lines(high) == {
        "input": (1500, D("2e-06"), D("0.003")),  # 1500 × 0.000002
        "cache_read": (500, D("2e-06"), D("0.001")),  # the tier's input price
        "output": (10, D("4e-06"), D("0.00004")),  # the tier's output price
    }
    assert high.total == D("0.00404")
    assert high.notes == (
        "no cache_read price; input price used",
        "tiered_pricing range (1000, 5000] applied for 2000 input tokens",
    )
    low = price(entry, input_tokens=100, output_tokens=10)
    assert lines(low) == {
        "input": (100, D("1e-06"), D("0.0001")),
        "output": (10, D("3e-06"), D("0.00003")),  # the entry's own output price
    }


def test_a_prompt_in_a_gap_between_ranges_takes_the_next_higher_tier() -> None:
    entry = {
        "tiered_pricing": [
            {"input_cost_per_token": D("1e-06"), "range": [0, 100]},
            {"input_cost_per_token": D("2e-06"), "range": [200, 300]},
        ]
    }
    assert price(entry, input_tokens=100).total == D("0.0001")  # 100 × 0.000001
    assert price(entry, input_tokens=150).total == D("0.0003")  # 150 × 0.000002


def test_tiered_pricing_with_a_service_tier_says_the_tier_has_no_prices() -> None:
    quote = price(QWEN3_CODER_FLASH, tier="batch", input_tokens=1000)
    assert quote.total == D("0.0003")  # 1000 × 0.0000003
    assert quote.notes == (
        "tiered_pricing range (0, 32000] applied for 1000 input tokens",
        "service tier 'batch' has no prices for this model; standard prices used",
    )


@pytest.mark.parametrize(
    ("max_results", "unit_price", "cost"),
    [
        (1, D("0.00166"), D("0.00332")),  # 2 × 0.00166
        (10, D("0.00166"), D("0.00332")),
        (11, D("0.00332"), D("0.00664")),  # 2 × 0.00332
        (40, D("0.00664"), D("0.01328")),
        (500, D("0.00664"), D("0.01328")),  # past the last range: the last tier
    ],
)
def test_search_queries_are_priced_by_the_max_results_tier(
    max_results: int, unit_price: D, cost: D
) -> None:
    quote = price(FIRECRAWL_SEARCH, queries=2, max_results=max_results)
    assert lines(quote) == {"queries": (2, unit_price, cost)}
    assert quote.notes == ()


def test_max_results_defaults_to_ten_and_says_so() -> None:
    quote = price(FIRECRAWL_SEARCH, queries=2)
    assert lines(quote) == {"queries": (2, D("0.00166"), D("0.00332"))}
    assert quote.notes == ("max_results not given; 10 assumed for the query price tier",)


# --- off-peak -------------------------------------------------------------------------------

# deepseek-flash, input 1000 (400 cached), output 100:
# peak:     600 × 0.0000003 + 400 × 0.000000006 + 100 × 0.0000012 = 0.00018 + 0.0000024 + 0.00012
PEAK = D("0.0003024")
# off-peak: 600 × 0.00000015 + 400 × 0.000000003 + 100 × 0.0000006 = 0.00009 + 0.0000012 + 0.00006
OFF_PEAK = D("0.0001512")


@pytest.mark.parametrize(
    ("at", "total"),
    [
        (datetime(2025, 1, 6, 0, 0, 0, tzinfo=UTC), OFF_PEAK),  # Monday, 00:00-01:00 starts
        (datetime(2025, 1, 6, 0, 59, 59, tzinfo=UTC), OFF_PEAK),
        (datetime(2025, 1, 6, 1, 0, 0, tzinfo=UTC), PEAK),  # its end is exclusive
        (datetime(2025, 1, 6, 3, 59, 59, tzinfo=UTC), PEAK),
        (datetime(2025, 1, 6, 4, 0, 0, tzinfo=UTC), OFF_PEAK),  # 04:00-06:00
        (datetime(2025, 1, 6, 5, 59, 59, tzinfo=UTC), OFF_PEAK),
        (datetime(2025, 1, 6, 6, 0, 0, tzinfo=UTC), PEAK),
        (datetime(2025, 1, 6, 9, 59, 59, tzinfo=UTC), PEAK),
        (datetime(2025, 1, 6, 10, 0, 0, tzinfo=UTC), OFF_PEAK),  # 10:00 to midnight
        (datetime(2025, 1, 6, 23, 59, 59, tzinfo=UTC), OFF_PEAK),
        (datetime(2025, 1, 10, 9, 59, 59, tzinfo=UTC), PEAK),  # Friday is a weekday
        (datetime(2025, 1, 11, 9, 59, 59, tzinfo=UTC), OFF_PEAK),  # Saturday: all day
        (datetime(2025, 1, 12, 23, 59, 59, tzinfo=UTC), OFF_PEAK),  # Sunday: all day
        (datetime(2025, 1, 13, 1, 0, 0, tzinfo=UTC), PEAK),  # Monday again
        # Other offsets are read in UTC: 09:30 +08:00 is 01:30 UTC, 12:00 +08:00 is 04:00 UTC.
        (datetime(2025, 1, 6, 9, 30, tzinfo=timezone(timedelta(hours=8))), PEAK),
        (datetime(2025, 1, 6, 12, 0, tzinfo=timezone(timedelta(hours=8))), OFF_PEAK),
    ],
)
def test_off_peak_windows_start_inclusive_and_end_exclusive(at: datetime, total: D) -> None:
    quote = price(
        DEEPSEEK_FLASH, at=at, input_tokens=1000, cache_read_tokens=400, output_tokens=100
    )
    assert quote.total == total
    assert quote.notes == (("off-peak prices applied",) if total == OFF_PEAK else ())


def test_off_peak_prices_replace_each_rate_and_reasoning_follows_the_output_rate() -> None:
    at = datetime(2025, 1, 11, 12, 0, tzinfo=UTC)  # Saturday
    quote = price(DEEPSEEK_FLASH, at=at, input_tokens=1000, output_tokens=100, reasoning_tokens=40)
    assert lines(quote) == {
        "input": (1000, D("1.5e-07"), D("0.00015")),
        "output": (60, D("6e-07"), D("0.000036")),
        "reasoning": (40, D("6e-07"), D("0.000024")),  # the off-peak output price
    }
    assert quote.total == D("0.00021")


WEEKEND_IN_SHANGHAI: dict[str, Any] = {
    "input_cost_per_token": D("2e-06"),
    "off_peak_pricing": {
        "input_cost_per_token": D("1e-06"),
        "weekday_timezone": "Asia/Shanghai",
        "windows": [{"hours_utc": "00:00-00:00", "weekdays": [6, 7]}],
    },
}


@pytest.mark.parametrize(
    ("at", "total"),
    [
        (datetime(2025, 1, 10, 15, 59, 59, tzinfo=UTC), D("0.002")),  # Friday 23:59:59 there
        (datetime(2025, 1, 10, 16, 0, 0, tzinfo=UTC), D("0.001")),  # Saturday 00:00 there
        (datetime(2025, 1, 12, 15, 59, 59, tzinfo=UTC), D("0.001")),  # Sunday 23:59:59 there
        (datetime(2025, 1, 12, 16, 0, 0, tzinfo=UTC), D("0.002")),  # Monday 00:00 there
    ],
)
def test_weekdays_are_read_on_the_calendar_the_entry_names(at: datetime, total: D) -> None:
    assert price(WEEKEND_IN_SHANGHAI, at=at, input_tokens=1000).total == total


def test_an_unknown_weekday_calendar_leaves_standard_prices_and_says_so() -> None:
    entry = {
        "input_cost_per_token": D("2e-06"),
        "off_peak_pricing": {
            "input_cost_per_token": D("1e-06"),
            "weekday_timezone": "Mars/Olympus_Mons",
            "windows": [{"hours_utc": "00:00-00:00", "weekdays": [1, 2, 3, 4, 5, 6, 7]}],
        },
    }
    quote = price(entry, input_tokens=1000)
    assert quote.total == D("0.002")
    assert quote.notes == ("off-peak windows by weekday ignored: unknown weekday_timezone",)


@pytest.mark.parametrize(
    ("hour", "minute", "second", "total"),
    [
        (21, 59, 59, D("0.002")),
        (22, 0, 0, D("0.001")),
        (1, 59, 59, D("0.001")),  # the window runs past midnight
        (2, 0, 0, D("0.002")),
    ],
)
def test_an_every_day_window_may_run_past_midnight(
    hour: int, minute: int, second: int, total: D
) -> None:
    entry = {
        "input_cost_per_token": D("2e-06"),
        "off_peak_pricing": {"input_cost_per_token": D("1e-06"), "hours_utc": "22:00-02:00"},
    }
    at = datetime(2025, 1, 8, hour, minute, second, tzinfo=UTC)
    assert price(entry, at=at, input_tokens=1000).total == total


def test_the_time_of_the_call_must_be_timezone_aware() -> None:
    with pytest.raises(InvalidCall, match="timezone-aware"):
        price(DEEPSEEK_FLASH, at=datetime(2025, 1, 6, 12, 0), input_tokens=1)


# --- invalid usage --------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["input_tokens", "reasoning_tokens", "images", "requests"])
def test_a_negative_count_is_refused_by_name(field: str) -> None:
    counts: dict[str, Any] = {field: -1}
    with pytest.raises(UsageError, match=f"must not be negative: {field}") as error:
        validate_usage(Usage(**counts))
    assert error.value.fields == (field,)


@pytest.mark.parametrize("value", [1.5, True, "10"])
def test_a_count_that_is_not_a_whole_number_is_refused(value: object) -> None:
    with pytest.raises(UsageError, match="must be whole numbers: output_tokens") as error:
        validate_usage(Usage(output_tokens=value))  # type: ignore[arg-type]
    assert error.value.fields == ("output_tokens",)


def test_an_absurd_count_is_refused() -> None:
    with pytest.raises(UsageError, match="larger than 1000000000000000: input_tokens"):
        validate_usage(Usage(input_tokens=10**15 + 1))


@pytest.mark.parametrize(
    ("counts", "message", "fields"),
    [
        (
            {"input_tokens": 1000, "cache_read_tokens": 1001},
            "cache_read_tokens (1001) is larger than input_tokens (1000)",
            ("cache_read_tokens", "input_tokens"),
        ),
        (
            {"input_tokens": 1000, "cache_write_tokens": 1001},
            "cache_write_tokens (1001) is larger than input_tokens (1000)",
            ("cache_write_tokens", "input_tokens"),
        ),
        (
            {"input_tokens": 1000, "cache_read_tokens": 600, "cache_write_tokens": 500},
            "cache_read_tokens + cache_write_tokens (1100) is larger than input_tokens (1000)",
            ("cache_read_tokens", "cache_write_tokens", "input_tokens"),
        ),
        (
            {"input_tokens": 5, "cache_write_tokens": 1, "cache_write_1h_tokens": 2},
            "cache_write_1h_tokens (2) is larger than cache_write_tokens (1)",
            ("cache_write_1h_tokens", "cache_write_tokens"),
        ),
        (
            {"input_tokens": 10, "input_audio_tokens": 11},
            "input_audio_tokens (11) is larger than input_tokens (10)",
            ("input_audio_tokens", "input_tokens"),
        ),
        (
            {"input_tokens": 10, "input_image_tokens": 11},
            "input_image_tokens (11) is larger than input_tokens (10)",
            ("input_image_tokens", "input_tokens"),
        ),
        (
            {"input_tokens": 10, "input_video_tokens": 11},
            "input_video_tokens (11) is larger than input_tokens (10)",
            ("input_video_tokens", "input_tokens"),
        ),
        (
            {"input_tokens": 5, "cache_read_tokens": 2, "cache_read_audio_tokens": 2,
             "input_audio_tokens": 1},
            "cache_read_audio_tokens (2) is larger than input_audio_tokens (1)",
            ("cache_read_audio_tokens", "input_audio_tokens"),
        ),
        (
            {"input_tokens": 5, "cache_read_tokens": 2, "cache_read_image_tokens": 2,
             "input_image_tokens": 1},
            "cache_read_image_tokens (2) is larger than input_image_tokens (1)",
            ("cache_read_image_tokens", "input_image_tokens"),
        ),
        (
            {"input_tokens": 10, "cache_read_tokens": 3, "cache_read_audio_tokens": 2,
             "input_audio_tokens": 2, "cache_read_image_tokens": 2, "input_image_tokens": 2},
            "cache_read_audio_tokens + cache_read_image_tokens (4) is larger than "
            "cache_read_tokens (3)",
            ("cache_read_audio_tokens", "cache_read_image_tokens", "cache_read_tokens"),
        ),
        (
            # 6 cached + 8 audio, 3 of them cached: 11 distinct prompt tokens in a prompt of 10
            {"input_tokens": 10, "cache_read_tokens": 6, "input_audio_tokens": 8,
             "cache_read_audio_tokens": 3},
            "cache_read_tokens + input_audio_tokens - cache_read_audio_tokens (11) is larger "
            "than input_tokens (10)",
            ("cache_read_tokens", "input_audio_tokens", "cache_read_audio_tokens", "input_tokens"),
        ),
        (
            {"output_tokens": 10, "reasoning_tokens": 11},
            "reasoning_tokens (11) is larger than output_tokens (10)",
            ("reasoning_tokens", "output_tokens"),
        ),
        (
            {"output_tokens": 10, "output_audio_tokens": 11},
            "output_audio_tokens (11) is larger than output_tokens (10)",
            ("output_audio_tokens", "output_tokens"),
        ),
        (
            {"output_tokens": 10, "output_image_tokens": 11},
            "output_image_tokens (11) is larger than output_tokens (10)",
            ("output_image_tokens", "output_tokens"),
        ),
        (
            {"output_tokens": 10, "output_video_tokens": 11},
            "output_video_tokens (11) is larger than output_tokens (10)",
            ("output_video_tokens", "output_tokens"),
        ),
        (
            {"output_tokens": 10, "reasoning_tokens": 6, "output_audio_tokens": 5},
            "reasoning_tokens + output_audio_tokens (11) is larger than output_tokens (10)",
            ("reasoning_tokens", "output_audio_tokens", "output_tokens"),
        ),
    ],
)  # fmt: skip
def test_a_part_larger_than_its_total_is_refused_naming_the_fields(
    counts: dict[str, Any], message: str, fields: tuple[str, ...]
) -> None:
    with pytest.raises(UsageError) as error:
        price(GPT_4O, **counts)
    assert str(error.value) == message
    assert error.value.fields == fields


def test_each_count_is_priced_by_its_rest_derived_from_the_parts_statement() -> None:
    # The rest of a total is what none of its parts counts. Cached audio and image tokens are
    # inside both cache_read_tokens and their modality count, so the input text adds them back.
    assert REST["input_tokens"] == Rest(
        less=(
            "cache_read_tokens",
            "cache_write_tokens",
            "input_audio_tokens",
            "input_image_tokens",
            "input_video_tokens",
        ),
        more=("cache_read_audio_tokens", "cache_read_image_tokens"),
    )
    assert REST["cache_read_tokens"] == Rest(
        less=("cache_read_audio_tokens", "cache_read_image_tokens"), more=()
    )
    assert REST["cache_write_tokens"] == Rest(less=("cache_write_1h_tokens",), more=())
    assert REST["input_audio_tokens"] == Rest(less=("cache_read_audio_tokens",), more=())
    assert REST["input_image_tokens"] == Rest(less=("cache_read_image_tokens",), more=())
    assert REST["output_tokens"] == Rest(
        less=(
            "reasoning_tokens",
            "output_audio_tokens",
            "output_image_tokens",
            "output_video_tokens",
        ),
        more=(),
    )
    # Validation checks the totals in the statement's order: each after the totals among its
    # parts, so that a part larger than its total is named before the sums that contain it.
    order = list(PARTS)
    assert all(
        order.index(part) < order.index(total)
        for total, parts in PARTS.items()
        for part in parts
        if part in PARTS
    )
    assert set(REST) == set(COUNT_FIELDS)
    assert all(REST[name] == Rest((), ()) for name in COUNT_FIELDS if name not in PARTS)
    assert set(COUNT_FIELDS) == set(Usage.__struct_fields__) - {
        "max_results",
        "search_context_size",
    }


def test_parts_that_exactly_fill_their_totals_are_accepted() -> None:
    # 6 cached (3 of them audio) + 4 uncached audio = 10; 7 reasoning + 3 audio = 10
    usage = Usage(
        input_tokens=10,
        cache_read_tokens=6,
        input_audio_tokens=7,
        cache_read_audio_tokens=3,
        output_tokens=10,
        reasoning_tokens=7,
        output_audio_tokens=3,
    )
    validate_usage(usage)
    entry = {"input_cost_per_token": D("1"), "output_cost_per_token": D("2")}
    quote = price_call(entry, usage, at=WEDNESDAY_NOON)
    # nothing is left for plain input or output text, and each token is priced once
    assert {c.name: c.quantity for c in quote.components} == {
        "cache_read": 3, "cache_read_audio": 3, "input_audio": 4, "reasoning": 7,
        "output_audio": 3,
    }  # fmt: skip
    assert quote.total == 10 * D("1") + 10 * D("2")


def test_an_unknown_search_context_size_is_refused() -> None:
    with pytest.raises(UsageError, match="search_context_size") as error:
        validate_usage(Usage(search_context_size="huge"))  # type: ignore[arg-type]
    assert error.value.fields == ("search_context_size",)


@pytest.mark.parametrize("field", Usage.__struct_fields__[:-2])
@pytest.mark.parametrize("value", [-1, 1.5, True, "10", None, 10**15 + 1])
def test_pricing_refuses_a_bad_count_as_validation_does(field: str, value: object) -> None:
    # Parts are checked too when they are met as parts first (cache reads within the input).
    usage = Usage(**{"input_tokens": 100, "output_tokens": 10, field: value})
    with pytest.raises(UsageError) as expected:
        validate_usage(usage)
    with pytest.raises(UsageError) as error:
        price_call(EVERYTHING, usage, at=WEDNESDAY_NOON)
    assert str(error.value) == str(expected.value)
    assert error.value.fields == expected.value.fields


@pytest.mark.parametrize(
    "counts",
    [
        {"max_results": -1},
        {"max_results": True},
        {"search_context_size": "huge"},
        {"images": 1, "search_context_size": "huge"},
    ],
)
def test_pricing_refuses_a_bad_choice_as_validation_does(counts: dict[str, Any]) -> None:
    usage = Usage(input_tokens=10, **counts)
    with pytest.raises(UsageError) as expected:
        validate_usage(usage)
    with pytest.raises(UsageError) as error:
        price_call(EVERYTHING, usage, at=WEDNESDAY_NOON)
    assert str(error.value) == str(expected.value)


def test_a_total_filled_by_its_parts_leaves_no_remainder_to_price_or_list() -> None:
    # No output price: output text beside the reasoning is unpriced, but only when there is some.
    entry = {"input_cost_per_token": D("1e-06"), "output_cost_per_reasoning_token": D("4e-06")}
    quote = price(entry, input_tokens=10, output_tokens=7, reasoning_tokens=7)
    assert lines(quote) == {
        "input": (10, D("1e-06"), D("0.00001")),
        "reasoning": (7, D("4e-06"), D("0.000028")),  # 7 × 0.000004
    }
    assert quote.unpriced == ()
    assert price(entry, input_tokens=10, output_tokens=8, reasoning_tokens=7).unpriced == (
        "output",
    )


def test_notes_speak_only_of_the_parts_a_call_used() -> None:
    # Every cache write is a 1-hour write: nothing is priced as a 5-minute cache write, so only
    # the 1-hour writes' fallback is noted.
    quote = price(GPT_4O, input_tokens=100, cache_write_tokens=40, cache_write_1h_tokens=40)
    assert lines(quote) == {
        "input": (60, D("2.5e-06"), D("0.00015")),
        "cache_write_1h": (40, D("2.5e-06"), D("0.0001")),
    }
    assert quote.notes == ("no cache_write_1h price; cache_write price used",)


def test_usage_decodes_from_json_with_omitted_fields_zero_and_refuses_unknown_ones() -> None:
    usage = msgspec.json.decode(b'{"input_tokens": 1000, "output_tokens": 500}', type=Usage)
    assert usage == Usage(input_tokens=1000, output_tokens=500)
    assert usage.cache_read_tokens == 0
    assert usage.requests == 0  # requests too: no per-request fee unless given
    with pytest.raises(msgspec.ValidationError, match="input_tokenz"):
        msgspec.json.decode(b'{"input_tokenz": 1000}', type=Usage)


# --- fields and compiling -------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "input_cost_per_token",
        "input_cost_per_token_batches",
        "input_cost_per_token_above_272k_tokens_priority",
        "cache_creation_input_token_cost_above_1hr",
        "cache_creation_input_token_cost_above_1hr_above_200k_tokens",
        "input_cost_per_audio_token_above_200k_tokens_flex",
        "input_cost_per_image_above_128k_tokens",
        "input_cost_per_token_cache_hit",
        "ocr_cost_per_page_batches",
        "tiered_pricing",
        "off_peak_pricing",
        "search_context_cost_per_query",
    ],
)
def test_fields_the_calculator_prices(field: str) -> None:
    assert is_price_field(field)
    assert is_understood_field(field)


@pytest.mark.parametrize(
    "field",
    [
        "input_cost_per_token_ultrafast",
        "input_cost_per_token_balanced",
        "cache_creation_input_token_cost_above_12hr",
        "output_cost_per_second_720p",
        "output_cost_per_image_1K",
        "input_cost_per_video_per_second_above_8s_interval",
        "fedramp_uplift_multiplier",
        "regional_processing_uplift_multiplier_eu",
        "search_free_requests",
        "input_dbu_cost_per_token",
        "citation_cost_per_token",
    ],
)
def test_price_fields_the_calculator_does_not_understand_yet(field: str) -> None:
    assert is_price_field(field)
    assert not is_understood_field(field)


@pytest.mark.parametrize(
    "field", ["mode", "max_input_tokens", "supports_vision", "litellm_provider"]
)
def test_fields_that_are_not_prices(field: str) -> None:
    assert not is_price_field(field)


def test_compiling_lists_the_price_fields_it_ignores() -> None:
    compiled = compile_entry(
        {
            **GPT_4O,
            "input_cost_per_token_ultrafast": D("1e-05"),
            "fedramp_uplift_multiplier": D("1.1"),
            "max_input_tokens": 128000,
        }
    )
    assert compiled.ignored_fields == (
        "fedramp_uplift_multiplier",
        "input_cost_per_token_ultrafast",
    )
    assert compiled.invalid_fields == ()


def test_compiling_lists_keys_it_ignores_inside_tiers_and_off_peak_blocks() -> None:
    compiled = compile_entry(
        {
            "tiered_pricing": [
                {"input_cost_per_token": D("1e-06"), "input_cost_per_audio_token": D("2e-06"),
                 "range": [0, 100]},
            ],
            "off_peak_pricing": {"output_cost_per_audio_token": D("1e-06"), "hours_utc": "bad"},
        }
    )  # fmt: skip
    assert compiled.ignored_fields == (
        "off_peak_pricing.output_cost_per_audio_token",
        "tiered_pricing.input_cost_per_audio_token",
    )
    assert compiled.invalid_fields == ("off_peak_pricing",)  # "bad" is no window


def test_a_compiled_entry_prices_like_the_entry_in_every_regime() -> None:
    compiled = compile_entry(GEMINI_2_5_PRO)
    usages = [
        Usage(input_tokens=200_001, cache_read_tokens=5, output_tokens=7, reasoning_tokens=3),
        Usage(input_tokens=10, cache_write_tokens=4, output_tokens=7),
        Usage(input_tokens=200_000, cache_read_tokens=5, output_tokens=7, reasoning_tokens=3),
    ]
    tiers: list[ServiceTier] = ["priority", "standard", "flex", "batch", "priority"]
    for _ in range(2):  # the second round reads the memoized regimes
        for usage in usages:
            for tier in tiers:
                assert price_call(compiled, usage, service_tier=tier, at=WEDNESDAY_NOON) == (
                    price_call(GEMINI_2_5_PRO, usage, service_tier=tier, at=WEDNESDAY_NOON)
                )


def test_costs_are_exact_where_default_decimal_precision_would_round() -> None:
    entry = {"input_cost_per_token": D("1.0000000000000001e-07")}
    quote = price(entry, input_tokens=999_999_999_999_999)
    # 999999999999999 × 1e-7 = 99999999.9999999; × 1e-23 = 0.00000000999999999999999
    expected = D("99999999.99999990999999999999999")
    assert quote.total == expected
    assert len(expected.as_tuple().digits) == 31  # more than the default context's 28
    assert quote.components[0].cost == expected


@pytest.mark.parametrize(
    "context",
    [
        decimal.Context(prec=3),
        decimal.Context(prec=60, Emin=-5),  # one cached token costs less than 1e-5
        decimal.Context(prec=60, Emax=5),  # 10**15 output tokens cost more than 1e5
        decimal.Context(prec=60, Emax=30, clamp=1),  # exponents above -29 would be folded
        decimal.Context(prec=60, traps=[decimal.Inexact, decimal.Rounded, decimal.Subnormal]),
    ],
    ids=["prec", "Emin", "Emax", "clamp", "traps"],
)
def test_prices_do_not_depend_on_the_callers_decimal_context(context: decimal.Context) -> None:
    usage = Usage(input_tokens=250_000, cache_read_tokens=1, output_tokens=10**15)
    expected = price_call(GEMINI_2_5_PRO, usage, at=WEDNESDAY_NOON)
    compiled = compile_entry(GEMINI_2_5_PRO)
    with decimal.localcontext(context) as caller:
        quote = price_call(compiled, usage, at=WEDNESDAY_NOON)
        assert not any(caller.flags.values())  # no signal raised in the caller's context
    assert msgspec.json.encode(quote) == msgspec.json.encode(expected)  # the digits too


def test_the_total_is_written_as_a_sum_from_zero() -> None:
    # A price with a positive exponent keeps it in its cost; the total, like 0 + 5E+1, does not.
    quote = price({"input_cost_per_request": D("1E+1")}, requests=5)
    assert str(quote.components[0].cost) == "5E+1"
    assert str(quote.total) == "50"


def test_a_compiled_entry_keeps_a_bounded_memo_and_prices_alike_past_it() -> None:
    compiled = compile_entry(EVERYTHING)
    # 2**8 usages, each with other counts that are not 0: more than the memo holds (64 plans)
    counted = [name for name in COUNTED if name != "requests"][:8]
    for bits in [*range(2 ** len(counted)), 0, 1, 2**8 - 1]:
        counts = {name: 1 for index, name in enumerate(counted) if bits >> index & 1}
        quote = price(compiled, input_tokens=10, **counts)
        assert quote == price(EVERYTHING, input_tokens=10, **counts)
        assert len(compiled.tables) <= 64


# --- properties -----------------------------------------------------------------------------

REAL_ENTRIES: list[dict[str, Any]] = [
    GPT_4O,
    CLAUDE_SONNET_4_5,
    GPT_5_4,
    GEMINI_2_5_PRO,
    GEMINI_2_5_FLASH,
    QWEN3_CODER_FLASH,
    DEEPSEEK_FLASH,
    KYMA_QWEN3_7_FLASH,
    GROK_4_3,
    SONAR_MEDIUM_ONLINE,
    FIRECRAWL_SEARCH,
]
TOKENS = st.integers(min_value=0, max_value=2_000_000)
COUNTS = st.integers(min_value=0, max_value=1_000_000)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    """Valid usages: every total is drawn as the sum of its parts plus a remainder."""
    cache_read_audio = draw(TOKENS)
    cache_read_image = draw(TOKENS)
    cache_read = cache_read_audio + cache_read_image + draw(TOKENS)
    input_audio = cache_read_audio + draw(TOKENS)
    input_image = cache_read_image + draw(TOKENS)
    cache_write_1h = draw(TOKENS)
    cache_write = cache_write_1h + draw(TOKENS)
    input_video = draw(TOKENS)
    input_tokens = (
        cache_read
        + cache_write
        + (input_audio - cache_read_audio)
        + (input_image - cache_read_image)
        + input_video
        + draw(TOKENS)
    )
    output_parts = [draw(TOKENS) for _ in range(4)]
    counted = {name: draw(COUNTS) for name in COUNTED}
    return Usage(
        input_tokens=input_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=cache_write_1h,
        cache_read_audio_tokens=cache_read_audio,
        cache_read_image_tokens=cache_read_image,
        input_audio_tokens=input_audio,
        input_image_tokens=input_image,
        input_video_tokens=input_video,
        output_tokens=sum(output_parts) + draw(TOKENS),
        reasoning_tokens=output_parts[0],
        output_audio_tokens=output_parts[1],
        output_image_tokens=output_parts[2],
        output_video_tokens=output_parts[3],
        max_results=draw(st.none() | st.integers(min_value=0, max_value=200)),
        search_context_size=draw(st.sampled_from(["low", "medium", "high"])),
        **counted,
    )


COUNTED = (
    "images",
    "input_images",
    "input_pixels",
    "output_pixels",
    "requests",
    "seconds",
    "input_seconds",
    "output_seconds",
    "input_audio_seconds",
    "input_video_seconds",
    "output_video_seconds",
    "input_characters",
    "output_characters",
    "queries",
    "web_searches",
    "maps_grounding_queries",
    "pages",
    "annotated_pages",
)
MOMENTS = st.datetimes(
    min_value=datetime(2024, 1, 1),
    max_value=datetime(2027, 1, 1),
    timezones=st.just(UTC),
)
TIERS = st.sampled_from(["standard", "batch", "priority", "flex"])
COMPILED = [compile_entry(entry) for entry in REAL_ENTRIES]


def _no_floats(value: object) -> bool:
    if isinstance(value, float):
        return False
    if isinstance(value, (tuple, list)):
        return all(_no_floats(item) for item in value)
    if isinstance(value, msgspec.Struct):
        return all(_no_floats(item) for item in msgspec.structs.astuple(value))
    return True


@settings(max_examples=400, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(REAL_ENTRIES) - 1),
    usage=usages(),
    tier=TIERS,
    at=MOMENTS,
)
def test_the_total_is_the_exact_sum_of_its_components_and_never_negative(
    index: int, usage: Usage, tier: ServiceTier, at: datetime
) -> None:
    quote = price_call(COMPILED[index], usage, service_tier=tier, at=at)
    with decimal.localcontext() as exact:
        exact.prec = 1000
        exact.traps[decimal.Inexact] = True
        assert quote.total == sum((c.cost for c in quote.components), D(0))
        for component in quote.components:
            assert component.cost == component.quantity * component.unit_price
            assert component.quantity > 0
            assert component.unit_price >= 0
    assert quote.total >= 0
    assert _no_floats(quote)
    assert all(type(c.cost) is D and type(c.unit_price) is D for c in quote.components)
    assert type(quote.total) is D
    names = [c.name for c in quote.components]
    assert len(names) == len(set(names))
    assert not set(names) & set(quote.unpriced)
    # compiling afresh and memoized regimes give the same answer
    assert quote == price_call(REAL_ENTRIES[index], usage, service_tier=tier, at=at)


INPUT_PARTS = (
    "input", "cache_read", "cache_read_audio", "cache_read_image", "cache_write",
    "cache_write_1h", "input_audio", "input_image", "input_video",
)  # fmt: skip
OUTPUT_PARTS = ("output", "reasoning", "output_audio", "output_image", "output_video")


@settings(max_examples=200, deadline=None)
@given(usage=usages(), tier=TIERS, at=MOMENTS)
def test_every_token_is_priced_exactly_once(usage: Usage, tier: ServiceTier, at: datetime) -> None:
    quote = price_call(EVERYTHING, usage, service_tier=tier, at=at)
    quantities = {c.name: c.quantity for c in quote.components}
    assert sum(quantities.get(name, 0) for name in INPUT_PARTS) == usage.input_tokens
    assert sum(quantities.get(name, 0) for name in OUTPUT_PARTS) == usage.output_tokens
    assert quote.unpriced == ()
    assert all(isinstance(c, CostComponent) for c in quote.components)
