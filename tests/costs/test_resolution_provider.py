"""Name resolution with the provider given apart: a dated name or a region prefix is another
spelling of the provider's own model, never another provider's, which would bill the call at that
provider's price. An alias names its target, whoever's it is."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from aiserver.costs.catalog import Catalog, Resolution, UnknownModel

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(model: str, provider: str, row_id: int) -> dict[str, Any]:
    entry = {"litellm_provider": provider, "mode": "chat", "input_cost_per_token": Decimal(row_id)}
    return {
        "id": row_id, "source": "litellm", "provider": provider, "model": model, "mode": "chat",
        "valid_from": T0, "valid_to": None, "entry": entry,
    }  # fmt: skip


ROWS = [
    row("gpt-4o", "openai", 1),
    row("gpt-4o-2024-11-20", "openai", 2),
    row("claude-sonnet-4-5-20250929", "anthropic", 3),
    row("anthropic.claude-3-5-haiku-20241022-v1:0", "bedrock", 4),
    row("groq/llama-4-scout", "groq", 5),
    row("global.anthropic.claude-opus-5-5", "bedrock_converse", 6),
    row("vertex_ai/claude-sonnet-4-5@20250929", "vertex_ai-anthropic_models", 7),
    row("anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock_converse", 8),
    # a regional key of its own (priced apart from the global one) for `us.`, none for `eu.`
    row("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock_converse", 9),
    row("us.anthropic.claude-haiku-4-5", "bedrock_mantle", 10),
    row("anthropic.claude-haiku-4-5", "bedrock_mantle", 11),
    row("qwen_ai_platform/qwen3-max-2026-01-23", "qwen_ai_platform", 12),
    row("qwen_ai_platform/qwen3-max", "qwen_ai_platform", 13),
]
ALIASES = {
    "claude-sonnet-latest": "claude-sonnet-4-5-20250929",
    # LiteLLM's provider aliases may name a model of a sibling provider (bedrock_converse here)
    "bedrock/claude-opus-latest": "global.anthropic.claude-opus-5-5",
}


@pytest.fixture
def catalog() -> Catalog:
    return Catalog.build(ROWS, aliases=ALIASES, version=1)


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        # the newest dated version of the name, but OpenAI's
        ("gpt-4o", "my-vllm"),
        ("gpt-4o", "groq"),
        # the name without its date, but OpenAI's
        ("gpt-4o-2024-08-06", "groq"),
        # Anthropic's dated key
        ("claude-sonnet-4-5", "openai"),
        ("claude-sonnet-4-5", "vertex_ai"),
        # Bedrock's model without the geo prefix
        ("us.anthropic.claude-3-5-haiku-20241022-v1:0", "openai"),
        ("eu.anthropic.claude-3-5-haiku-20241022-v1:0", "anthropic"),
        # a sibling is a route of the same name, not any name that starts alike
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "bed"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrockx"),
    ],
)
def test_a_variant_of_another_providers_model_is_unknown(
    catalog: Catalog, name: str, provider: str
) -> None:
    with pytest.raises(UnknownModel):
        catalog.resolve(name, provider)


@pytest.mark.parametrize(
    ("name", "provider", "key", "matched_by"),
    [
        ("gpt-4o-2024-08-06", "openai", "gpt-4o", "dated_name"),
        # the provider is compared as the rest of resolution compares it: ignoring case and
        # surrounding spaces
        ("gpt-4o-2024-08-06", "OpenAI", "gpt-4o", "dated_name"),
        ("gpt-4o-2024-08-06", " openai ", "gpt-4o", "dated_name"),
        ("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5-20250929", "dated_name"),
        ("claude-sonnet-4-5", "Anthropic", "claude-sonnet-4-5-20250929", "dated_name"),
        (
            "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            "bedrock",
            "anthropic.claude-3-5-haiku-20241022-v1:0",
            "region_prefix",
        ),
        # a key with the provider's prefix is the provider's, whatever its entry calls it
        (
            "claude-sonnet-4-5@20250929",
            "vertex_ai",
            "vertex_ai/claude-sonnet-4-5@20250929",
            "provider_prefix",
        ),
        # LiteLLM reports every Bedrock call as `bedrock`, Claude 4.x's entries are
        # `bedrock_converse`: one provider's two routes (before this, such calls went unpriced)
        (
            "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "bedrock",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "region_prefix",
        ),
        # the same names without a provider: any provider's
        ("gpt-4o-2024-08-06", None, "gpt-4o", "dated_name"),
        ("claude-sonnet-4-5", None, "claude-sonnet-4-5-20250929", "dated_name"),
        # an alias names its target, whoever's: the provider's own alias may name a sibling
        # provider's key, and the bare alias is the source's word for the name
        ("claude-opus-latest", "bedrock", "global.anthropic.claude-opus-5-5", "alias"),
        ("claude-sonnet-latest", "anthropic", "claude-sonnet-4-5-20250929", "alias"),
    ],
)
def test_a_variant_of_the_providers_own_model_still_resolves(
    catalog: Catalog, name: str, provider: str | None, key: str, matched_by: str
) -> None:
    resolved = catalog.resolve(name, provider)
    assert (resolved.key, resolved.matched_by) == (key, matched_by)


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        # LiteLLM reports every Bedrock call as `bedrock`: a key of a sibling route is the
        # provider's own, and matches as given before any variant names another model
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "Bedrock"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock_converse"),
        ("us.anthropic.claude-haiku-4-5", "bedrock"),
        ("qwen_ai_platform/qwen3-max-2026-01-23", "qwen"),
    ],
)
def test_a_siblings_exact_key_is_matched_as_given(
    catalog: Catalog, name: str, provider: str
) -> None:
    # Not the base model's price by region_prefix or dated_name: the regional (dated) key has
    # a price of its own, and billing the base model's would underbill the call.
    assert catalog.resolve(name, provider) == Resolution(name, "exact")
