"""Exact price of one model call, from one price entry in LiteLLM's price-map format.

The entry is one value of LiteLLM's ``model_prices_and_context_window.json``, decoded with
``msgspec.json.Decoder(float_hook=decimal.Decimal)``: prices are ``Decimal`` (or ``int``), never
``float``. Everything here is pure: no I/O, no clock, no database. A catalog compiles each
entry once with :func:`compile_entry` and prices calls with :func:`price_call` (or
:func:`quote`, the same answer as a plain tuple).

Usage semantics:

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

The modules, each one concept (none imports a later one in this list):

- :mod:`.dimensions`: the priced dimensions, the service tiers and the shape of a quote;
- :mod:`.exact`: what a usable price is, and the exact arithmetic context;
- :mod:`.usage`: the usage model, which counts are parts of which totals, and validation;
- :mod:`.fields`: the grammar of an entry's price fields;
- :mod:`.off_peak`: the off-peak calendar;
- :mod:`.entry`: compiling an entry;
- :mod:`.regime`: which price applies to each dimension in one pricing regime;
- :mod:`.notes`: what a quote says about the prices it used;
- :mod:`.plan`: the fast path (`price_call`, `quote`), memoized plans per regime and usage mask;
- :mod:`.reference`: the plain reference pricer the tests hold the fast path to.
"""

from __future__ import annotations

from aiserver.costs.errors import UsageError
from aiserver.costs.pricing.dimensions import (
    CostComponent,
    PriceQuote,
    Quote,
    ServiceTier,
)
from aiserver.costs.pricing.entry import CompiledPrices, compile_entry
from aiserver.costs.pricing.fields import is_price_field, is_understood_field
from aiserver.costs.pricing.plan import price_call, quote
from aiserver.costs.pricing.usage import (
    MAX_QUANTITY,
    SearchContextSize,
    Usage,
    validate_usage,
)

__all__ = [
    "MAX_QUANTITY",
    "CompiledPrices",
    "CostComponent",
    "PriceQuote",
    "Quote",
    "SearchContextSize",
    "ServiceTier",
    "Usage",
    "UsageError",
    "compile_entry",
    "is_price_field",
    "is_understood_field",
    "price_call",
    "quote",
    "validate_usage",
]
