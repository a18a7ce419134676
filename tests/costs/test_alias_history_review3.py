"""A key added later under the spelling of a name that resolved by another rule before (a refresh
adds `claude-sonnet-4-5`, an undated name until then) leaves the calls before it as they
resolved then: a key counts for a call only once the catalog had it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import Catalog
from aiserver.costs.pricing import Usage
from aiserver.costs.store.overrides import Override
from aiserver.ledger.usage.valuation import value_usage

from ..conftest import Settings
from ..support.catalog import rated
from ..support.upstream import Upstream
from .test_alias_history_refresh import catalog_of, refresh
from .test_alias_history_refresh import cfg as cfg  # the fixture

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 3, 1, tzinfo=UTC)
BETWEEN = T0 + timedelta(days=1)
BEFORE = T0 - timedelta(days=30)
USAGE = Usage(input_tokens=1_000_000)
DATED = "claude-sonnet-4-5-20250929"
UNDATED = "claude-sonnet-4-5"


def row(model: str, row_id: int, *, provider: str = "anthropic", **span: Any) -> dict[str, Any]:
    """A price row whose input costs `row_id` dollars a token, so a total names its row."""
    entry = {"litellm_provider": provider, "mode": "chat", "input_cost_per_token": Decimal(row_id)}
    return {
        "id": row_id, "source": "litellm", "provider": provider, "model": model, "mode": "chat",
        "valid_from": span.get("valid_from", T0), "valid_to": span.get("valid_to"), "entry": entry,
    }  # fmt: skip


def build(rows: list[dict[str, Any]], **kwargs: Any) -> Catalog:
    return Catalog.build(rows, aliases={}, version=3, **kwargs)


def priced(
    catalog: Catalog, name: str, at: datetime | None, provider: str | None = None
) -> tuple[str, Decimal]:
    result = calculate(catalog, CostRequest(model=name, provider=provider, usage=USAGE, at=at))
    return result.model, result.total


# -- in memory ---------------------------------------------------------------------------------

ROWS = [row(DATED, 3), row(UNDATED, 5, valid_from=T1)]


def test_an_exact_key_added_later_leaves_the_calls_before_it_to_the_dated_key() -> None:
    catalog = build(ROWS)
    # now first: the memo holds the exact key, which must not answer for the past
    assert priced(catalog, UNDATED, None) == (UNDATED, Decimal(5_000_000))
    assert priced(catalog, UNDATED, BETWEEN) == (DATED, Decimal(3_000_000))
    assert catalog.resolve(UNDATED, at=BETWEEN).matched_by == "dated_name"
    assert priced(catalog, UNDATED, T1) == (UNDATED, Decimal(5_000_000))
    assert catalog.resolve(UNDATED, at=T1).matched_by == "exact"
    # a call from before the catalog had either: as the name resolved first, the dated key
    assert priced(catalog, UNDATED, BEFORE)[0] == DATED
    # a reprice of the call values it as ingest did at its time
    valued = value_usage(
        catalog, model=UNDATED, provider=None, usage=USAGE, service_tier="standard",
        occurred_at=BETWEEN,
    )  # fmt: skip
    assert (valued.matched_model, valued.total) == (DATED, Decimal(3_000_000))
    assert priced(catalog, UNDATED, None) == (UNDATED, Decimal(5_000_000))  # memo kept


def test_a_past_call_asked_first_leaves_the_answer_for_now() -> None:
    catalog = build(ROWS)
    assert priced(catalog, UNDATED, BETWEEN)[0] == DATED
    assert priced(catalog, UNDATED, None)[0] == UNDATED
    assert priced(catalog, UNDATED, datetime.now(UTC))[0] == UNDATED
    assert priced(catalog, UNDATED, BETWEEN)[0] == DATED


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        ("Claude-Sonnet-4-5", None),  # case_insensitive
        ("anthropic/claude-sonnet-4-5", None),  # provider_prefix
        (UNDATED, "anthropic"),  # exact with the provider apart
        (UNDATED, "ANTHROPIC"),
    ],
)
def test_every_spelling_of_the_later_key_leaves_the_calls_before_it(
    name: str, provider: str | None
) -> None:
    catalog = build(ROWS)
    assert priced(catalog, name, None, provider)[0] == UNDATED
    assert priced(catalog, name, BETWEEN, provider)[0] == DATED
    assert priced(catalog, name, T1, provider)[0] == UNDATED


def test_a_regional_key_added_later_leaves_the_calls_before_it_to_the_global_one() -> None:
    base = "anthropic.claude-x-v1:0"
    regional = f"us.{base}"
    catalog = build(
        [
            row(base, 3, provider="bedrock_converse"),
            row(regional, 4, provider="bedrock_converse", valid_from=T1),
        ]
    )
    for provider in (None, "bedrock"):
        assert priced(catalog, regional, None, provider) == (regional, Decimal(4_000_000))
        assert priced(catalog, regional, BETWEEN, provider) == (base, Decimal(3_000_000))
        assert catalog.resolve(regional, provider, at=BETWEEN).matched_by == "region_prefix"
        assert priced(catalog, regional, T1, provider) == (regional, Decimal(4_000_000))


def test_a_prefixed_key_added_later_leaves_the_calls_before_it_to_the_bare_one() -> None:
    catalog = build(
        [
            row("gpt-z", 3, provider="openai"),
            row("openai/gpt-z", 4, provider="openai", valid_from=T1),
        ]
    )
    assert priced(catalog, "openai/gpt-z", None) == ("openai/gpt-z", Decimal(4_000_000))
    assert priced(catalog, "openai/gpt-z", BETWEEN) == ("gpt-z", Decimal(3_000_000))
    assert catalog.resolve("openai/gpt-z", at=BETWEEN).matched_by == "provider_prefix"


def test_a_key_an_override_added_later_leaves_the_calls_before_it() -> None:
    added = Override(
        id=7, provider="anthropic", model=UNDATED, prices={"input_cost_per_token": 9},
        reason="", created_at=T1, valid_from=T1,
    )  # fmt: skip
    catalog = build([row(DATED, 3)], overrides=[added])
    assert priced(catalog, UNDATED, None)[0] == UNDATED
    assert priced(catalog, UNDATED, BETWEEN) == (DATED, Decimal(3_000_000))


def test_a_removed_key_still_answers_for_the_calls_after_it_left() -> None:
    """As now: a name whose key the source dropped is that key, whose 404 says when it left,
    not another model billed in its place."""
    catalog = build([row(DATED, 3), row(UNDATED, 5, valid_from=T0, valid_to=T1)])
    assert catalog.resolve(UNDATED, at=T1 + timedelta(days=1)).key == UNDATED
    assert catalog.resolve(UNDATED).key == UNDATED
    assert priced(catalog, UNDATED, BETWEEN)[0] == UNDATED


# -- against a real refresh --------------------------------------------------------------------

OLD = "gpt-x-2024-05-13"


async def test_a_refresh_that_adds_the_undated_key_leaves_the_calls_before_it(
    cfg: Settings, upstream: Upstream
) -> None:
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    await refresh(cfg, upstream, rated({OLD: 5}))
    then = datetime.now(UTC)
    before = priced(await catalog_of(cfg), "gpt-x", then)
    assert before == (OLD, Decimal(5))
    await refresh(cfg, upstream, rated({OLD: 5, "gpt-x": 9}))
    catalog = await catalog_of(cfg)
    assert priced(catalog, "gpt-x", None) == ("gpt-x", Decimal(9))
    assert priced(catalog, "gpt-x", then) == before
    assert priced(catalog, "gpt-x", long_ago)[0] == OLD  # as it resolved first
    assert priced(catalog, "gpt-x", datetime.now(UTC)) == ("gpt-x", Decimal(9))
    assert priced(catalog, "openai/gpt-x", then) == before
    assert priced(catalog, "gpt-x", then, "openai") == before
    # a reprice of the call values it as ingest did
    valued = value_usage(
        catalog, model="gpt-x", provider=None, usage=USAGE, service_tier="standard",
        occurred_at=then,
    )  # fmt: skip
    assert (valued.matched_model, valued.total) == before
