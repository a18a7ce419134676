"""A past call resolves its name as the catalog resolved it at the call's time: a refresh that
re-points an alias or adds a newer dated key must not bill it at another model's price."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from aiserver.core_db.connections import connect
from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.calculator import CostRequest, calculate
from aiserver.costs.catalog import Catalog, load_catalog
from aiserver.costs.pricing import Usage
from aiserver.costs.refresh import Outcome, refresh_catalog
from aiserver.ledger.usage.valuation import value_usage

from ..conftest import Settings, replace_settings
from ..support.catalog import fetch_all, model_entry, rated
from ..support.upstream import Upstream

USAGE = Usage(input_tokens=1_000_000)
ALIAS_MIGRATION = "2026-12-05T10:00:00:000000"
OLD = "gpt-x-2024-05-13"
NEW = "gpt-x-2024-11-20"


@pytest.fixture
def cfg(settings: Settings, upstream: Upstream) -> Settings:
    return replace_settings(
        settings,
        model_cost_source_url=upstream.url,
        model_cost_fetch_retries=1,
        model_cost_max_shrink_fraction=0.5,
    )


def body(dated: dict[str, int], alias_target: str, **extra: Any) -> bytes:
    """20 plain models, the dated keys of `gpt-x` (each priced at its own rate), an alias."""
    return rated(dated, **{"gpt-alias": {"alias_of": alias_target}}, **extra)


async def refresh(cfg: Settings, upstream: Upstream, served: bytes) -> None:
    upstream.serve(served)
    report = await refresh_catalog(cfg.core, cfg.costs, force=True, trigger="test")
    assert report.outcome is Outcome.APPLIED, report


async def catalog_of(cfg: Settings) -> Catalog:
    conn = await connect(cfg.core)
    try:
        return await load_catalog(conn)
    finally:
        await conn.close()


def priced(catalog: Catalog, model: str, at: datetime | None) -> tuple[str, Decimal]:
    result = calculate(catalog, CostRequest(model=model, usage=USAGE, at=at))
    return result.model, result.total


async def test_a_past_call_keeps_the_alias_target_of_its_time(
    cfg: Settings, upstream: Upstream
) -> None:
    await refresh(cfg, upstream, body({OLD: 5}, "gpt-test-001"))
    then = datetime.now(UTC)
    before = priced(await catalog_of(cfg), "gpt-alias", then)
    assert before == ("gpt-test-001", Decimal(2))
    await refresh(cfg, upstream, body({OLD: 5}, "gpt-test-007"))
    catalog = await catalog_of(cfg)
    assert priced(catalog, "gpt-alias", then) == before
    assert priced(catalog, "gpt-alias", None) == ("gpt-test-007", Decimal(8))
    assert priced(catalog, "gpt-alias", datetime.now(UTC)) == ("gpt-test-007", Decimal(8))
    assert catalog.resolve("gpt-alias", at=then).key == "gpt-test-001"
    # a reprice of the call prices it as ingest did
    valued = value_usage(
        catalog, model="gpt-alias", provider=None, usage=USAGE, service_tier="standard",
        occurred_at=then,
    )  # fmt: skip
    assert (valued.matched_model, valued.total) == before
    # the history of the alias is stored: the first mapping closed where the second began
    spans = await fetch_all(
        cfg.core.database_url,
        "SELECT target, valid_from, valid_to FROM ai_model_alias_history ORDER BY valid_from",
    )
    assert [s["target"] for s in spans] == ["gpt-test-001", "gpt-test-007"]
    assert spans[0]["valid_to"] == spans[1]["valid_from"]
    assert spans[1]["valid_to"] is None


async def test_a_past_call_keeps_the_dated_key_of_its_time(
    cfg: Settings, upstream: Upstream
) -> None:
    await refresh(cfg, upstream, body({OLD: 5}, "gpt-test-001"))
    then = datetime.now(UTC)
    assert priced(await catalog_of(cfg), "gpt-x", then) == (OLD, Decimal(5))
    await refresh(cfg, upstream, body({OLD: 5, NEW: 3}, "gpt-test-001"))
    catalog = await catalog_of(cfg)
    assert priced(catalog, "gpt-x", then) == (OLD, Decimal(5))
    assert priced(catalog, "gpt-x", None) == (NEW, Decimal(3))
    assert priced(catalog, "gpt-x", datetime.now(UTC)) == (NEW, Decimal(3))


async def test_an_undated_name_answers_with_a_dated_key_that_is_still_there(
    cfg: Settings, upstream: Upstream
) -> None:
    await refresh(cfg, upstream, body({OLD: 5, NEW: 3}, "gpt-test-001"))
    then = datetime.now(UTC)
    await refresh(cfg, upstream, body({OLD: 5}, "gpt-test-001"))  # NEW removed
    catalog = await catalog_of(cfg)
    assert priced(catalog, "gpt-x", None) == (OLD, Decimal(5))
    assert priced(catalog, "gpt-x", then) == (NEW, Decimal(3))  # it was there then


async def test_an_alias_whose_target_was_skipped_keeps_its_target(
    cfg: Settings, upstream: Upstream
) -> None:
    await refresh(cfg, upstream, body({OLD: 5}, OLD))
    broken = body({}, OLD, **{OLD: model_entry(0, input_cost_per_token="a price")})
    upstream.serve(broken)
    report = await refresh_catalog(cfg.core, cfg.costs, force=True, trigger="test")
    assert sorted(report.skipped) == ["gpt-alias", OLD]
    catalog = await catalog_of(cfg)
    assert priced(catalog, "gpt-alias", None) == (OLD, Decimal(5))


async def test_the_migration_keeps_the_aliases_of_before_for_every_past_call(
    cfg: Settings, upstream: Upstream
) -> None:
    """A catalog of the release before (aliases without history): the migration copies the
    current aliases in, so every past call resolves as before, and the history goes on from
    there."""
    await refresh(cfg, upstream, body({OLD: 5}, "gpt-test-001"))
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    conn = await connect(cfg.core)
    try:
        await conn.execute("DROP TABLE ai_model_alias_history")
        await conn.execute(
            "DELETE FROM migration WHERE app_name = 'costs' AND name = $1", ALIAS_MIGRATION
        )
    finally:
        await conn.close()
    assert await apply_migrations(cfg.core) == [f"costs:{ALIAS_MIGRATION}"]
    migrated = datetime.now(UTC)
    spans = await fetch_all(
        cfg.core.database_url, "SELECT alias, target, valid_to FROM ai_model_alias_history"
    )
    assert [tuple(s) for s in spans] == [("gpt-alias", "gpt-test-001", None)]
    catalog = await catalog_of(cfg)
    assert priced(catalog, "gpt-alias", long_ago)[0] == "gpt-test-001"
    assert priced(catalog, "gpt-alias", None)[0] == "gpt-test-001"

    await refresh(cfg, upstream, body({OLD: 5}, "gpt-test-007"))
    catalog = await catalog_of(cfg)
    assert priced(catalog, "gpt-alias", long_ago)[0] == "gpt-test-001"
    assert priced(catalog, "gpt-alias", migrated)[0] == "gpt-test-001"
    assert priced(catalog, "gpt-alias", None)[0] == "gpt-test-007"
