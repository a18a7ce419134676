"""What every part of pricing speaks of: the priced dimensions, the service tiers, and the shape
of a quote.

A dimension is one line a quote can have (``input``, ``cache_read``, ``images`` ...): the usage
count its quantity starts from, the entry's price field for it, and the dimension whose price
applies when the entry has none of its own. The order of :data:`DIMENSIONS` is the order of a
quote's components. This module imports nothing else of the package: the usage model, the field
grammar, compiling, both pricers and the notes all read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Final, Literal, NamedTuple

import msgspec

ServiceTier = Literal["standard", "batch", "priority", "flex"]

# The suffix of an entry's price fields for each service tier ("" for standard).
SERVICE_SUFFIX: Final[Mapping[str, str]] = {
    "standard": "",
    "batch": "batches",
    "priority": "priority",
    "flex": "flex",
}
SUFFIX_SERVICE: Final[Mapping[str, str]] = {
    suffix: tier for tier, suffix in SERVICE_SUFFIX.items() if suffix
}


class Dimension(NamedTuple):
    name: str  # component name, stable: others rely on it
    field: str  # the base price field of the entry
    fallback: str | None  # the dimension whose price applies when the entry has none of its own
    tokens: bool  # a token part of input_tokens or output_tokens (long-context notes)
    unpriced_if_missing: bool = True

    @property
    def count_field(self) -> str:
        """The usage count its quantity starts from: ``<name>_tokens`` for tokens, else
        ``<name>``."""
        return f"{self.name}_tokens" if self.tokens else self.name


# Components are reported in this order.
DIMENSIONS: Final[tuple[Dimension, ...]] = (
    Dimension("input", "input_cost_per_token", None, True),
    Dimension("cache_read", "cache_read_input_token_cost", "input", True),
    Dimension("cache_read_audio", "cache_read_input_audio_token_cost", "cache_read", True),
    Dimension("cache_read_image", "cache_read_input_image_token_cost", "cache_read", True),
    Dimension("cache_write", "cache_creation_input_token_cost", "input", True),
    Dimension("cache_write_1h", "cache_creation_input_token_cost_above_1hr", "cache_write", True),
    Dimension("input_audio", "input_cost_per_audio_token", "input", True),
    Dimension("input_image", "input_cost_per_image_token", "input", True),
    Dimension("input_video", "input_cost_per_video_token", "input", True),
    Dimension("output", "output_cost_per_token", None, True),
    Dimension("reasoning", "output_cost_per_reasoning_token", "output", True),
    Dimension("output_audio", "output_cost_per_audio_token", "output", True),
    Dimension("output_image", "output_cost_per_image_token", "output", True),
    Dimension("output_video", "output_cost_per_video_token", "output", True),
    Dimension("images", "output_cost_per_image", None, False),
    Dimension("input_images", "input_cost_per_image", None, False),
    Dimension("input_pixels", "input_cost_per_pixel", None, False),
    Dimension("output_pixels", "output_cost_per_pixel", None, False),
    # A model without a per-request fee charges nothing per request: ``requests`` is no
    # unpriced dimension when the entry has no input_cost_per_request.
    Dimension("requests", "input_cost_per_request", None, False, unpriced_if_missing=False),
    Dimension("seconds", "cost_per_second", None, False),
    Dimension("input_seconds", "input_cost_per_second", None, False),
    Dimension("output_seconds", "output_cost_per_second", None, False),
    Dimension("input_audio_seconds", "input_cost_per_audio_per_second", None, False),
    Dimension("input_video_seconds", "input_cost_per_video_per_second", None, False),
    Dimension("output_video_seconds", "output_cost_per_video_per_second", None, False),
    Dimension("input_characters", "input_cost_per_character", None, False),
    Dimension("output_characters", "output_cost_per_character", None, False),
    Dimension("queries", "input_cost_per_query", None, False),
    Dimension("web_searches", "search_context_cost_per_query", None, False),
    Dimension("maps_grounding_queries", "google_maps_grounding_cost_per_query", None, False),
    Dimension("pages", "ocr_cost_per_page", None, False),
    Dimension("annotated_pages", "annotation_cost_per_page", None, False),
)
BY_NAME: Final[Mapping[str, Dimension]] = {dim.name: dim for dim in DIMENSIONS}


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


#: What `quote` answers: the total, the components, the unpriced dimensions and the notes.
Quote = tuple[Decimal, tuple[CostComponent, ...], tuple[str, ...], tuple[str, ...]]
