"""What an operator asks of the catalog: is it fresh, how big, what went wrong last."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from aiserver.costs.pricing import is_price_field
from aiserver.costs.settings import CostSettings
from aiserver.costs.source import DEFAULT_SOURCE
from aiserver.costs.store.metadata import SourceState, read_state
from aiserver.costs.store.overrides import count_overrides
from aiserver.costs.store.prices import current_model_count, read_current_entries
from aiserver.costs.store.runs import LastRun, last_run
from aiserver.costs.urls import redact_url

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection


class CatalogStatus(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    url: str | None
    model_count: int
    alias_count: int
    override_count: int
    catalog_version: int
    last_checked_at: datetime | None
    last_success_at: datetime | None
    last_changed_at: datetime | None
    age_seconds: float | None
    max_age_seconds: int
    stale: bool
    last_error: str | None
    last_error_at: datetime | None
    last_run: LastRun | None


def is_stale(state: SourceState | None, *, now: datetime, max_age_seconds: int) -> bool:
    """Whether the catalog needs a refresh: no success yet, or the last is `max_age_seconds` old."""
    if state is None or state.last_success_at is None:
        return True
    return (now - state.last_success_at).total_seconds() >= max_age_seconds


async def read_status(
    conn: DbConnection, settings: CostSettings, *, source: str = DEFAULT_SOURCE
) -> CatalogStatus:
    state = await read_state(conn, source)
    now = datetime.now(UTC)
    models = await current_model_count(conn, source)
    overrides = await count_overrides(conn)
    run = await last_run(conn, source)
    success = state.last_success_at if state else None
    age = (now - success).total_seconds() if success else None
    return CatalogStatus(
        source=source,
        # stored redacted (`store.metadata`); a row from an older release may hold secrets
        url=redact_url(state.url) if state else None,
        model_count=models,
        alias_count=state.alias_count if state else 0,
        override_count=overrides,
        catalog_version=state.catalog_version if state else 0,
        last_checked_at=state.last_checked_at if state else None,
        last_success_at=success,
        last_changed_at=state.last_changed_at if state else None,
        age_seconds=round(age, 3) if age is not None else None,
        max_age_seconds=settings.model_cost_max_age_seconds,
        stale=is_stale(state, now=now, max_age_seconds=settings.model_cost_max_age_seconds),
        last_error=state.last_error if state else None,
        last_error_at=state.last_error_at if state else None,
        last_run=run,
    )


async def price_field_usage(conn: DbConnection, *, source: str = DEFAULT_SOURCE) -> Counter[str]:
    """How many current models use each price field (`pricing.is_price_field`: the calculator's
    own question, so that `fields` shows what it ignores as well as what it prices)."""
    usage: Counter[str] = Counter()
    for entry in await read_current_entries(conn, source):
        usage.update(name for name in entry if is_price_field(name))
    return usage
