"""An override's price is what is charged: it wins over the entry's tiered_pricing range prices,
its off-peak prices and its max_results tiers for the same price, which the operator cannot
override (they hold several prices). A quote that names an override was priced by it.

The entries are the bundled snapshot's, as the source gives them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Any

import pytest

from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import Catalog
from aiserver.costs.pricing import Usage
from aiserver.costs.pricing.plan import quote
from aiserver.costs.pricing.reference import reference_quote
from aiserver.costs.refresh import snapshot_bytes
from aiserver.costs.source import parse_source
from aiserver.costs.store.overrides import Override

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# DeepSeek's off-peak windows: on weekdays 00:00-01:00, 04:00-06:00 and 10:00-24:00 UTC
PEAK = datetime(2026, 12, 7, 8, tzinfo=UTC)  # a Monday, 08:00 UTC
OFF_PEAK = datetime(2026, 12, 7, 12, tzinfo=UTC)  # the same Monday, 12:00 UTC

QWEN = "dashscope/qwen-flash"  # tiers (0, 256k]: 5e-08 in, 4e-07 out; (256k, 1M]: 2.5e-07, 2e-06
DEEPSEEK = "deepseek-v4-flash"  # 3e-07 in, 1.2e-06 out, cache read 6e-09; off-peak half
EXA = "exa_ai/search"  # 0.005 a query up to 25 results, 0.025 up to 100


@cache
def _entries() -> Mapping[str, Mapping[str, Any]]:
    models = parse_source(snapshot_bytes()).models
    return {key: models[key].entry for key in (QWEN, DEEPSEEK, EXA)}


def _catalog(model: str, prices: Mapping[str, str]) -> Catalog:
    entry = _entries()[model]
    row = {
        "id": 1, "source": "litellm", "provider": entry["litellm_provider"], "model": model,
        "mode": entry["mode"], "valid_from": T0, "valid_to": None, "entry": entry,
    }  # fmt: skip
    override = Override(
        7, entry["litellm_provider"], model, {k: Decimal(v) for k, v in prices.items()}, "", T0, T0
    )
    return Catalog.build([row], aliases={}, overrides=[override], version=1)


def _priced(catalog: Catalog, model: str, usage: Usage, at: datetime) -> dict[str, Any]:
    """The quote's total, its unit prices by component and the override it names; the reference
    pricer agrees to the digit."""
    result = calculate(catalog, CostRequest(model=model, usage=usage, at=at))
    compiled = catalog.version_at(model, at)[0].prices
    assert reference_quote(compiled, usage, "standard", at) == quote(
        compiled, usage, "standard", at
    )
    return {
        "total": result.total,
        "prices": {c.name: c.unit_price for c in result.components},
        "override_id": result.override_id,
    }


@pytest.mark.parametrize("prompt", [1000, 300_000], ids=["first range", "second range"])
def test_an_input_override_wins_over_the_tiered_pricing_ranges(prompt: int) -> None:
    catalog = _catalog(QWEN, {"input_cost_per_token": "1E-8"})
    output = Decimal("4E-7") if prompt <= 256_000 else Decimal("0.000002")
    priced = _priced(catalog, QWEN, Usage(input_tokens=prompt, output_tokens=100), PEAK)
    assert priced == {
        "total": prompt * Decimal("1E-8") + 100 * output,
        "prices": {"input": Decimal("1E-8"), "output": output},  # output: the range's own
        "override_id": 7,
    }


@pytest.mark.parametrize("at", [PEAK, OFF_PEAK], ids=["peak", "off-peak"])
def test_an_override_wins_over_the_off_peak_price(at: datetime) -> None:
    catalog = _catalog(DEEPSEEK, {"input_cost_per_token": "1E-7"})
    output = Decimal("0.0000012") if at == PEAK else Decimal("6E-7")  # the window's own
    priced = _priced(catalog, DEEPSEEK, Usage(input_tokens=1000, output_tokens=100), at)
    assert priced == {
        "total": 1000 * Decimal("1E-7") + 100 * output,
        "prices": {"input": Decimal("1E-7"), "output": output},
        "override_id": 7,
    }


@pytest.mark.parametrize("at", [PEAK, OFF_PEAK], ids=["peak", "off-peak"])
def test_an_override_of_the_cache_hit_price_prices_cache_reads(at: datetime) -> None:
    """DeepSeek's entries give the cache read price twice, as cache_read_input_token_cost and as
    input_cost_per_token_cache_hit; an override of either is the price of cache reads."""
    usage = Usage(input_tokens=1000, cache_read_tokens=400)
    input_price = Decimal("3E-7") if at == PEAK else Decimal("1.5E-7")
    for field in ("input_cost_per_token_cache_hit", "cache_read_input_token_cost"):
        priced = _priced(_catalog(DEEPSEEK, {field: "1E-9"}), DEEPSEEK, usage, at)
        assert priced == {
            "total": 600 * input_price + 400 * Decimal("1E-9"),
            "prices": {"input": input_price, "cache_read": Decimal("1E-9")},
            "override_id": 7,
        }, field


@pytest.mark.parametrize("max_results", [10, 50])
def test_a_query_price_override_wins_over_the_max_results_tiers(max_results: int) -> None:
    catalog = _catalog(EXA, {"input_cost_per_query": "0.001"})
    priced = _priced(catalog, EXA, Usage(queries=2, max_results=max_results), PEAK)
    assert priced == {
        "total": Decimal("0.002"),
        "prices": {"queries": Decimal("0.001")},
        "override_id": 7,
    }
