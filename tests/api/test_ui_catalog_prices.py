"""The dashboard's catalog list names a model's prices of other units than tokens beside its
per-token columns, exactly: an image model (per image, per pixel) never reads as free, which
its blank input and 0 output per million tokens did before."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import cast

from aiserver.api.ui.catalog import other_prices
from aiserver.costs.catalog import PriceVersion


def _version(**entry: object) -> PriceVersion:
    return cast(PriceVersion, SimpleNamespace(entry=entry))


def test_an_image_model_s_prices_per_pixel_and_per_image_are_named_exactly() -> None:
    dall_e = _version(
        input_cost_per_pixel=Decimal("0.0000000839233"),
        output_cost_per_image=Decimal("0.04"),
        output_cost_per_token=Decimal("0"),
        litellm_provider="openai",
        mode="image_generation",
    )
    assert other_prices(dall_e) == [
        "per pixel (input) 0.0000000839233",
        "per image (output) 0.04",
    ]


def test_other_token_prices_are_per_million_and_the_listed_columns_are_left_out() -> None:
    audio = _version(
        input_cost_per_token=Decimal("0.0000025"),
        output_cost_per_token=Decimal("0.00001"),
        input_cost_per_audio_token=Decimal("0.00004"),
        output_cost_per_reasoning_token=Decimal("0.00001"),
        output_cost_per_second=Decimal("0.0001"),
        supports_vision=True,
        max_input_tokens=128000,
    )
    assert other_prices(audio) == [
        "per 1M audio tokens (input) 40",
        "per 1M reasoning tokens (output) 10",
        "per second (output) 0.0001",
    ]
    assert other_prices(_version(input_cost_per_token=Decimal("1e-06"))) == []


def test_tiered_token_prices_are_per_million_with_their_tier_in_words() -> None:
    """Before, a price per token of a tier (batches, priority, above 272k tokens) was written per
    token beside the columns' per million, and a price per option (a search's context size) as
    Python's text of a dict: `{'search_context_size_low': Decimal('0.025'), ...}`."""
    mini = _version(
        input_cost_per_token=Decimal("0.00000015"),
        input_cost_per_token_batches=Decimal("0.000000075"),
        output_cost_per_token_priority=Decimal("0.000001"),
        input_cost_per_token_above_272k_tokens_priority=Decimal("0.000005"),
        input_cost_per_image_token_batches=Decimal("0.000001"),
        cache_read_input_token_cost=Decimal("0.00000007"),
        search_context_cost_per_query={
            "search_context_size_low": Decimal("0.025"),
            "search_context_size_high": Decimal("0.03"),
        },
        input_cost_per_1k_tokens=Decimal("0.001"),
        litellm_provider="openai",
    )
    assert other_prices(mini) == [
        "per 1M tokens (cache read) 0.07",
        "per 1k tokens (input) 0.001",
        "per 1M image tokens (input, batches) 1",
        "per 1M tokens (input, above 272k tokens, priority) 5",
        "per 1M tokens (input, batches) 0.075",
        "per 1M tokens (output, priority) 1",
        "per query (search context, size high) 0.03",
        "per query (search context, size low) 0.025",
    ]


def test_prompt_cache_prices_are_per_million_with_their_kind_and_tier() -> None:
    """Before, no price of a prompt cache was listed (`cache_read_input_token_cost` is not named
    `..._cost_per_<unit>`): a model's cache reads and writes, priced by most of the catalog,
    were left out of its other prices."""
    opus = _version(
        input_cost_per_token=Decimal("0.000005"),
        cache_read_input_token_cost=Decimal("5e-7"),
        cache_creation_input_token_cost=Decimal("0.00000625"),
        cache_creation_input_token_cost_above_1hr=Decimal("0.00001"),
        cache_creation_input_token_cost_above_1hr_above_200k_tokens=Decimal("0.00002"),
        cache_read_input_token_cost_above_272k_tokens_priority=Decimal("0.0000005"),
        cache_read_input_audio_token_cost=Decimal("0.00000008"),
        explicit_cache_read_input_token_cost=Decimal("0.0000003"),
    )
    assert other_prices(opus) == [
        "per 1M tokens (cache write) 6.25",
        "per 1M tokens (cache write 1h) 10",
        "per 1M tokens (cache write 1h, above 200k tokens) 20",
        "per 1M audio tokens (cache read) 0.08",
        "per 1M tokens (cache read) 0.5",
        "per 1M tokens (cache read, above 272k tokens, priority) 0.5",
        "per 1M tokens (explicit cache read) 0.3",
    ]


def test_a_price_per_second_of_the_call_itself_is_named() -> None:
    """`cost_per_second` (a price of no direction, 28 models of the catalog) was left out: a
    model priced only per second read as free in the list."""
    assert other_prices(_version(cost_per_second=Decimal("0.0001"))) == ["per second 0.0001"]
