"""Name resolution, price versions by time, overrides, and the result shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiserver.costs.calculator import CostRequest, CostResponse, calculate
from aiserver.costs.catalog import Catalog, UnknownModel
from aiserver.costs.money import money
from aiserver.costs.pricing import Usage, UsageError
from aiserver.costs.store.overrides import Override

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 6, 1, tzinfo=UTC)


def row(
    model: str, provider: str, input_price: str, *, row_id: int, **extra: Any
) -> dict[str, Any]:
    return {
        "id": row_id,
        "source": "litellm",
        "provider": provider,
        "model": model,
        "mode": "chat",
        "valid_from": extra.pop("valid_from", T0),
        "valid_to": extra.pop("valid_to", None),
        "entry": {
            "litellm_provider": provider,
            "mode": "chat",
            "input_cost_per_token": Decimal(input_price),
            "output_cost_per_token": Decimal(input_price) * 4,
            **extra,
        },
    }


ROWS = [
    row("gpt-4o", "openai", "0.0000025", row_id=1, valid_to=T1),
    row("gpt-4o", "openai", "0.000002", row_id=2, valid_from=T1),
    row("azure/gpt-4o", "azure", "0.0000027", row_id=3),
    row("claude-sonnet-4-5-20250929", "anthropic", "0.000003", row_id=4),
    row("claude-haiku-4-5", "anthropic", "0.000001", row_id=5),
    row("anthropic.claude-3-5-haiku-20241022-v1:0", "bedrock", "0.0000008", row_id=6),
    row("bedrock/us-east-1/anthropic.claude-3-haiku", "bedrock", "0.00000025", row_id=7),
    row("anthropic.claude-3-haiku", "bedrock", "0.00000026", row_id=8),
    row("Mistral-Large", "mistral", "0.000002", row_id=9),
    row("retired-model", "openai", "0.00001", row_id=10, valid_to=T1),
    row("bedrock_mantle/claude-sonnet-4-5", "bedrock_mantle", "0.0000033", row_id=11),
    row("databricks/databricks-claude-sonnet-4-5", "databricks", "0.00000300003", row_id=12),
    row("perplexity/perplexity/sonar-x", "perplexity", "0.000001", row_id=13),
]
ALIASES = {
    "claude-sonnet-latest": "claude-sonnet-4-5-20250929",
    # LiteLLM's map has provider-prefixed aliases too, naming the provider's own model
    "bedrock_mantle/claude-sonnet-latest": "bedrock_mantle/claude-sonnet-4-5",
    "databricks/claude-sonnet-latest": "databricks/databricks-claude-sonnet-4-5",
}


@pytest.fixture
def catalog() -> Catalog:
    return Catalog.build(ROWS, aliases=ALIASES, version=7)


@pytest.mark.parametrize(
    ("name", "provider", "key", "matched_by"),
    [
        ("gpt-4o", None, "gpt-4o", "exact"),
        ("azure/gpt-4o", None, "azure/gpt-4o", "exact"),
        ("openai/gpt-4o", None, "gpt-4o", "provider_prefix"),
        ("gpt-4o", "openai", "gpt-4o", "exact"),
        ("gpt-4o", "azure", "azure/gpt-4o", "provider_prefix"),
        ("GPT-4o", None, "gpt-4o", "case_insensitive"),
        ("mistral-large", None, "Mistral-Large", "case_insensitive"),
        ("claude-sonnet-latest", None, "claude-sonnet-4-5-20250929", "alias"),
        # with the provider apart, the provider's alias wins over the bare name's (as in LiteLLM)
        ("claude-sonnet-latest", "bedrock_mantle", "bedrock_mantle/claude-sonnet-4-5", "alias"),
        ("claude-sonnet-latest", "databricks", "databricks/databricks-claude-sonnet-4-5", "alias"),
        ("bedrock_mantle/claude-sonnet-latest", None, "bedrock_mantle/claude-sonnet-4-5", "alias"),
        # a key that repeats its provider prefix, asked for as litellm joins provider and model
        ("perplexity/sonar-x", "perplexity", "perplexity/perplexity/sonar-x", "provider_prefix"),
        ("Perplexity/Sonar-X", "perplexity", "perplexity/perplexity/sonar-x", "provider_prefix"),
        ("claude-sonnet-4-5", None, "claude-sonnet-4-5-20250929", "dated_name"),
        ("claude-haiku-4-5-20251001", None, "claude-haiku-4-5", "dated_name"),
        (
            "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            None,
            "anthropic.claude-3-5-haiku-20241022-v1:0",
            "region_prefix",
        ),
        (
            "global.anthropic.claude-3-5-haiku-20241022-v1:0",
            None,
            "anthropic.claude-3-5-haiku-20241022-v1:0",
            "region_prefix",
        ),
        (
            "bedrock/us-east-1/anthropic.claude-3-haiku",
            None,
            "bedrock/us-east-1/anthropic.claude-3-haiku",
            "exact",
        ),
        (
            "bedrock/eu-west-3/anthropic.claude-3-haiku",
            None,
            "anthropic.claude-3-haiku",
            "region_prefix",
        ),
    ],
)
def test_resolution_rules(
    catalog: Catalog, name: str, provider: str | None, key: str, matched_by: str
) -> None:
    resolved = catalog.resolve(name, provider)
    assert (resolved.key, resolved.matched_by) == (key, matched_by)


def test_an_unknown_model_carries_the_closest_names(catalog: Catalog) -> None:
    with pytest.raises(UnknownModel) as caught:
        catalog.resolve("gpt-4oo")
    assert caught.value.suggestions[0] == "gpt-4o"
    assert "did you mean 'gpt-4o'" in str(caught.value)
    with pytest.raises(UnknownModel):
        catalog.resolve("gpt-4o", provider="anthropic")


def test_a_known_name_with_something_after_it_is_suggested_first() -> None:
    """difflib alone ranked gpt-5.4-pro and gpt-4-turbo before gpt-4o for gpt-4o-typo."""
    names = ["gpt-4o", "gpt-5.4-pro", "gpt-4-turbo", "gpt-4o-mini", "gpt-4"]
    catalog = Catalog.build(
        [row(n, "openai", "0.000001", row_id=i) for i, n in enumerate(names, 1)],
        aliases={}, version=1,
    )  # fmt: skip
    for name, provider in (("gpt-4o-typo", None), ("openai/gpt-4o-typo", None),
                           ("gpt-4o-typo", "openai")):  # fmt: skip
        with pytest.raises(UnknownModel) as caught:
            catalog.resolve(name, provider)
        assert caught.value.suggestions[0] == "gpt-4o", (name, provider)
        assert len(caught.value.suggestions) <= 5
    with pytest.raises(UnknownModel) as caught:
        catalog.resolve("gpt-4o-mini-2099-01-01x")  # the longest name it begins with first
    assert caught.value.suggestions[:2] == ("gpt-4o-mini", "gpt-4o")


def test_the_cost_of_a_plain_call_is_exact(catalog: Catalog) -> None:
    request = CostRequest(model="openai/gpt-4o", usage=Usage(input_tokens=1000, output_tokens=500))
    result = calculate(catalog, request, now=T1 + timedelta(days=1))
    # 1000 x 0.000002 = 0.002; 500 x 0.000008 = 0.004
    assert result.total == Decimal("0.006")
    assert [(c.name, c.quantity, c.unit_price, c.cost) for c in result.components] == [
        ("input", 1000, Decimal("0.000002"), Decimal("0.002")),
        ("output", 500, Decimal("0.000008"), Decimal("0.004")),
    ]
    assert (result.model, result.provider, result.matched_by) == (
        "gpt-4o",
        "openai",
        "provider_prefix",
    )
    assert (result.price_version, result.catalog_version, result.currency) == (2, 7, "USD")
    assert result.unpriced == ()


def test_a_call_with_nothing_priced_says_its_total_of_0_is_no_cost(catalog: Catalog) -> None:
    """Only images, to a model priced per token: the total is the priced part, 0, and a note
    says the cost is unknown (ingest records such a call as unpriced). A call with something
    priced beside the images has no such note: its total is a lower bound, as `unpriced` says."""
    only = calculate(catalog, CostRequest(model="gpt-4o", usage=Usage(images=2)), now=T1)
    assert (only.total, only.components, only.unpriced) == (Decimal(0), (), ("images",))
    assert only.notes == (
        "'gpt-4o' has no price for images, all that the call used: its cost is unknown, not 0",
    )
    some = calculate(
        catalog, CostRequest(model="gpt-4o", usage=Usage(input_tokens=1, images=2)), now=T1
    )
    assert (some.total, some.unpriced, some.notes) == (Decimal("0.000002"), ("images",), ())


def test_at_prices_with_the_version_valid_then(catalog: Catalog) -> None:
    usage = Usage(input_tokens=1000)
    before = calculate(
        catalog, CostRequest(model="gpt-4o", usage=usage, at=T1 - timedelta(seconds=1))
    )
    at_change = calculate(catalog, CostRequest(model="gpt-4o", usage=usage, at=T1))
    assert (before.price_version, before.total) == (1, Decimal("0.0025000"))
    assert (at_change.price_version, at_change.total) == (2, Decimal("0.002000"))


def test_a_call_before_the_first_version_uses_it_and_says_so(catalog: Catalog) -> None:
    early = calculate(
        catalog, CostRequest(model="gpt-4o", usage=Usage(input_tokens=1), at=T0 - timedelta(days=1))
    )
    assert early.price_version == 1
    assert "is before the catalog's first price for 'gpt-4o'" in early.notes[0]


def test_a_removed_model_prices_past_calls_only(catalog: Catalog) -> None:
    past = calculate(
        catalog, CostRequest(model="retired-model", usage=Usage(input_tokens=10), at=T0)
    )
    assert past.total == Decimal("0.00010")
    with pytest.raises(UnknownModel, match="was not in the catalog at"):
        calculate(catalog, CostRequest(model="retired-model", usage=Usage(input_tokens=10)))
    assert "retired-model" not in catalog.current


def test_a_part_larger_than_its_total_is_a_usage_error(catalog: Catalog) -> None:
    request = CostRequest(model="gpt-4o", usage=Usage(input_tokens=10, cache_read_tokens=11))
    with pytest.raises(UsageError) as caught:
        calculate(catalog, request)
    assert caught.value.fields == ("cache_read_tokens", "input_tokens")


TA = datetime(2026, 3, 1, tzinfo=UTC)  # within gpt-4o's first version (T0 to T1)
TB = datetime(2026, 9, 1, tzinfo=UTC)  # within its second (from T1)
TC = datetime(2026, 10, 1, tzinfo=UTC)


def override(
    override_id: int, provider: str, model: str, input_price: str, start: datetime,
    end: datetime | None = None,
) -> Override:  # fmt: skip
    prices = {"input_cost_per_token": Decimal(input_price)}
    return Override(override_id, provider, model, prices, "", start, start, end)


def priced(catalog: Catalog, model: str, at: datetime | None) -> tuple[Decimal, int | None, int]:
    usage = Usage(input_tokens=10, output_tokens=1)
    result = calculate(catalog, CostRequest(model=model, usage=usage, at=at))
    return result.total, result.override_id, result.price_version


def test_an_override_prices_the_calls_of_its_time_only() -> None:
    """Set at TA, replaced at TB, deleted at TC: a call is priced with what was valid then, and
    the source's other prices stay (the override names only the input price)."""
    overrides = [
        override(2, "openai", "gpt-4o", "0.0000015", TB, TC),
        override(1, "openai", "gpt-4o", "0.000001", TA, TB),
    ]
    catalog = Catalog.build(ROWS, aliases={}, overrides=overrides, version=3)
    # version 1: input 0.0000025, output 0.00001; version 2: input 0.000002, output 0.000008
    assert priced(catalog, "gpt-4o", T0) == (Decimal("0.000035"), None, 1)
    assert priced(catalog, "gpt-4o", TA - timedelta(microseconds=1)) == (
        Decimal("0.000035"), None, 1,
    )  # fmt: skip
    assert priced(catalog, "gpt-4o", TA) == (Decimal("0.000020"), 1, 1)
    assert priced(catalog, "gpt-4o", T1) == (Decimal("0.000018"), 1, 2)
    assert priced(catalog, "gpt-4o", TB) == (Decimal("0.0000230"), 2, 2)
    assert priced(catalog, "gpt-4o", TC) == (Decimal("0.000028"), None, 2)
    assert priced(catalog, "gpt-4o", None) == (Decimal("0.000028"), None, 2)  # now: deleted
    assert catalog.current["gpt-4o"].override_id is None
    assert [o.id for o in catalog.overrides("gpt-4o")] == [1, 2]
    assert catalog.override_at("gpt-4o", T1) == overrides[1]
    assert catalog.override_at("gpt-4o", TC) is None
    # the source's versions are kept as they are
    assert [(pv.id, pv.override_id) for pv in catalog.history("gpt-4o")] == [(1, None), (2, None)]


def test_the_current_override_prices_calls_of_now_and_is_built_once() -> None:
    overrides = [
        override(3, "anthropic", "claude-haiku-4-5", "0.0000005", TA, TB),
        override(4, "anthropic", "claude-haiku-4-5", "0.0000007", TB),
    ]
    catalog = Catalog.build(ROWS, aliases={}, overrides=overrides, version=3)
    # the source: input 0.000001, output 0.000004
    assert priced(catalog, "claude-haiku-4-5", None) == (Decimal("0.0000110"), 4, 5)
    assert priced(catalog, "claude-haiku-4-5", TB) == (Decimal("0.0000110"), 4, 5)
    assert priced(catalog, "claude-haiku-4-5", TA) == (Decimal("0.0000090"), 3, 5)
    assert priced(catalog, "claude-haiku-4-5", T0) == (Decimal("0.000014"), None, 5)
    current = catalog.current["claude-haiku-4-5"]
    assert (current.override_id, current.entry["input_cost_per_token"]) == (4, Decimal("7E-7"))
    assert current.entry["output_cost_per_token"] == Decimal("0.000004")
    # a call at a time of the current override is priced by the very same version
    assert catalog.version_at("claude-haiku-4-5", TB + timedelta(days=1))[0] is current
    assert catalog.models(provider="anthropic")[0] is current


def test_a_model_only_an_override_defines_exists_while_it_is_valid() -> None:
    overrides = [
        override(5, "inhouse", "my-model", "0.5", TA, TB),
        override(6, "inhouse", "my-model", "0.25", TB, TC),  # replaced at TB, deleted at TC
        override(7, "inhouse", "live-model", "0.1", TA),
    ]
    catalog = Catalog.build(ROWS, aliases={}, overrides=overrides, version=3)
    own = calculate(
        catalog, CostRequest(model="inhouse/my-model", usage=Usage(input_tokens=2), at=TA)
    )
    assert (own.model, own.provider, own.total, own.override_id, own.price_version) == (
        "my-model", "inhouse", Decimal("1.0"), 5, 0,
    )  # fmt: skip
    assert priced(catalog, "my-model", TB) == (Decimal("2.50"), 6, 0)
    with pytest.raises(UnknownModel) as before:
        priced(catalog, "my-model", TA - timedelta(seconds=1))
    assert str(before.value) == (
        "model 'my-model' was not in the catalog at 2026-02-28T23:59:59+00:00 "
        "(added by an override from 2026-03-01T00:00:00+00:00)"
    )
    assert before.value.problem()["status"] == 404
    for at in (TC, None):
        with pytest.raises(UnknownModel) as after:
            priced(catalog, "my-model", at)
        assert "(removed 2026-10-01T00:00:00+00:00)" in str(after.value)
    assert "my-model" not in catalog.current
    assert len(catalog) == len(Catalog.build(ROWS, aliases={}, version=3)) + 1  # live-model
    assert priced(catalog, "inhouse/live-model", None) == (Decimal("1.0"), 7, 0)
    with pytest.raises(UnknownModel, match="added by an override from"):
        priced(catalog, "live-model", T0)
    assert [pv.override_id for pv in catalog.history("my-model")] == [5, 6]


def test_a_model_an_override_added_keeps_its_prices_when_the_source_adds_it_later() -> None:
    """Set at TA for a model the source did not have; a refresh adds it at TB. The calls between
    are priced by the override alone, before the refresh and after it: not by the source's later
    prices (its output price, 0.000008 here, which the override never had)."""
    overrides = [override(8, "openai", "gpt-6", "0.000001", TA)]
    before = Catalog.build(ROWS, aliases={}, overrides=overrides, version=3)
    after = Catalog.build(
        [*ROWS, row("gpt-6", "openai", "0.000002", row_id=20, valid_from=TB)],
        aliases={},
        overrides=overrides,
        version=4,
    )
    between = TA + timedelta(days=1)
    for catalog in (before, after):
        result = calculate(
            catalog,
            CostRequest(model="gpt-6", usage=Usage(input_tokens=10, output_tokens=1), at=between),
        )
        # 10 × 0.000001; the override prices no output
        assert (result.total, result.override_id, result.price_version) == (
            Decimal("0.000010"), 8, 0,
        )  # fmt: skip
        assert (result.unpriced, result.notes) == (("output",), ())
    # from TB on, the source's prices with the override laid over them: 10 × 0.000001 + 0.000008
    assert priced(after, "gpt-6", TB) == (Decimal("0.000018"), 8, 20)
    assert priced(after, "gpt-6", None) == (Decimal("0.000018"), 8, 20)
    # before the override, only the source's first price can price it (with a note)
    assert priced(after, "gpt-6", TA - timedelta(days=1)) == (Decimal("0.000028"), None, 20)


def test_the_wire_shape_has_exact_decimal_strings(catalog: Catalog) -> None:
    result = calculate(
        catalog,
        CostRequest(model="anthropic.claude-3-5-haiku-20241022-v1:0", usage=Usage(input_tokens=10)),
    )
    wire = msgspec.json.decode(msgspec.json.encode(CostResponse.of(result)))
    assert wire["total"] == "0.000008"
    assert wire["components"] == [
        {"name": "input", "quantity": 10, "unit_price": "0.0000008", "cost": "0.000008"}
    ]
    assert money(Decimal("0E-12")) == "0"
    assert money(Decimal("1E+2")) == "100"


@given(st.decimals(allow_nan=False, allow_infinity=False), st.integers(min_value=0, max_value=8))
def test_money_is_the_exact_value_in_plain_notation(value: Decimal, zeros: int) -> None:
    padded = Decimal(f"{value:f}" + ("0" * zeros if "." in f"{value:f}" else ""))
    for spelling in (value, padded, Decimal(f"{value:E}")):
        text = money(spelling)
        assert Decimal(text) == value
        assert "E" not in text.upper()
        assert "." not in text or not text.endswith(("0", "."))  # no trailing zeros
        assert text != "-0"


def test_the_request_rejects_unknown_fields() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"model": "gpt-4o", "usage": {"inputs": 3}}', type=CostRequest)
    request = msgspec.json.decode(b'{"model": "gpt-4o"}', type=CostRequest)
    assert request.usage == Usage()
    assert request.service_tier == "standard"


@pytest.mark.parametrize("name", ["gpt-4o", "openai/gpt-4o", "GPT-4o", "claude-sonnet-latest"])
def test_a_name_seen_before_prices_the_same_as_the_first_time(catalog: Catalog, name: str) -> None:
    """The calculator memoizes the resolution and the current version of a name; the second
    answer comes from the memo and must equal the first."""
    request = CostRequest(model=name, usage=Usage(input_tokens=1000, output_tokens=10))
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    first = calculate(catalog, request, now=now)
    resolution, version = catalog.current_for(name)
    assert resolution == catalog.resolve(name)
    assert version is catalog.current[resolution.key]
    assert calculate(catalog, request, now=now) == first
    assert first.price_version == version.id
