"""docs/costs.md says what a prompt of exactly a long-context threshold pays, and pricing does
what it says: the base price, except for xAI's own entries, which pay the long-context price from
the threshold on (as LiteLLM bills them; the agreement check compares both sides of every
threshold). Real entries of the bundled snapshot, priced by the calculator."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pytest

from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import Catalog
from aiserver.costs.pricing import Usage, compile_entry
from aiserver.costs.refresh import snapshot_bytes
from aiserver.costs.source import decode_json

DOC: Final = Path(__file__).parents[2] / "docs" / "costs.md"
AT: Final = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
#: The same Grok model and prices, from xAI and from Azure; and a Gemini model (200k tokens).
MODELS: Final = ("xai/grok-4.3", "azure_ai/grok-4.3", "gemini-2.5-pro")


@pytest.fixture(scope="module")
def snapshot() -> dict[str, Any]:
    entries: dict[str, Any] = decode_json(snapshot_bytes())
    return entries


@pytest.fixture(scope="module")
def catalog(snapshot: dict[str, Any]) -> Catalog:
    rows = [
        {"id": index, "source": "litellm", "provider": snapshot[key]["litellm_provider"],
         "model": key, "mode": snapshot[key].get("mode"), "valid_from": datetime(2026, 1, 1,
         tzinfo=UTC), "valid_to": None, "entry": snapshot[key]}
        for index, key in enumerate(MODELS, start=1)
    ]  # fmt: skip
    return Catalog.build(rows, aliases={}, version=1)


def _long_context_rule() -> str:
    """The "Long context" item of docs/costs.md, "Which prices apply", on one line."""
    text = DOC.read_text("utf-8")
    found = re.search(r"^- \*\*Long context\.\*\*(.*?)(?=^- \*\*|^#)", text, re.M | re.S)
    assert found, "docs/costs.md has no 'Long context' item under 'Which prices apply'"
    return " ".join(found.group(1).split())


def test_the_docs_state_the_threshold_rule_and_its_xai_exception() -> None:
    rule = _long_context_rule()
    assert "a prompt of exactly 200,000 tokens pays the base price" in rule
    assert "`litellm_provider` is `xai`" in rule, rule
    assert "`input_tokens >= N`" in rule, rule
    assert "`azure_ai/grok-4.3`" in rule, rule  # the same model from another provider
    assert "LiteLLM" in rule, rule  # why


@pytest.mark.parametrize(
    ("model", "at_threshold", "note"),
    [
        # 200000 x 0.0000025 + 100 x 0.000005: the long-context prices
        ("xai/grok-4.3", "0.5005", "(input_tokens 200000 >= 200000)"),
        # 200000 x 0.00000125 + 100 x 0.0000025: the base prices
        ("azure_ai/grok-4.3", "0.25025", None),
        # 200000 x 0.00000125 + 100 x 0.00001: the base prices
        ("gemini-2.5-pro", "0.251", None),
    ],
)
def test_a_prompt_of_exactly_the_threshold_pays_what_the_docs_say(
    catalog: Catalog, model: str, at_threshold: str, note: str | None
) -> None:
    def priced(input_tokens: int) -> tuple[Decimal, tuple[str, ...]]:
        usage = Usage(input_tokens=input_tokens, output_tokens=100)
        result = calculate(catalog, CostRequest(model=model, usage=usage, at=AT))
        return result.total, result.notes

    total, notes = priced(200_000)
    assert total == Decimal(at_threshold)
    assert [n for n in notes if "long-context" in n] == (
        [f"long-context prices above 200k tokens applied {note}"] if note else []
    )
    above, notes = priced(200_001)  # one token more: long-context prices for every provider
    assert any("long-context prices above 200k tokens applied" in n for n in notes), notes
    assert above > total


def test_only_xais_own_entries_reach_a_threshold_at_the_threshold(
    snapshot: dict[str, Any],
) -> None:
    """The docs name the entries by their `litellm_provider`: every entry of the snapshot with a
    `*_above_<N>k_tokens` price is priced from the threshold on exactly when it is `xai`."""
    with_thresholds = {
        key: entry
        for key, entry in snapshot.items()
        if isinstance(entry, dict) and any("_above_" in f and f.endswith("_tokens") for f in entry)
    }
    inclusive = {key for key, e in with_thresholds.items() if compile_entry(e).inclusive_thresholds}
    xai = {key for key, e in with_thresholds.items() if e.get("litellm_provider") == "xai"}
    assert xai, "the snapshot has xAI entries with long-context prices"
    assert inclusive == xai
    assert all(key.startswith("xai/") for key in xai)
