"""The partition maintenance beside tables that only look like a month's partition."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from aiserver.ledger.usage.partitions import Maintenance, maintain_partitions, month_of_partition

from ..conftest import Settings


def test_a_name_that_says_no_month_is_no_partition_of_the_ledger() -> None:
    assert month_of_partition("usage_events_p202612") == datetime(2026, 12, 1, tzinfo=UTC)
    for name in ("usage_events_p202613", "usage_events_p202600", "usage_events_p000012"):
        assert month_of_partition(name) is None


async def test_a_table_named_like_a_month_that_is_none_does_not_stop_the_maintenance(
    settings: Settings,
) -> None:
    """A table made by hand with a partition's pattern of name and no month in it made every
    run raise ValueError once the months ahead were made: no month past the retention was
    dropped, and no key forgotten, any more."""
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        await maintain_partitions(conn, retention_days=30, now=datetime(2026, 1, 10, tzinfo=UTC))
        for name in ("usage_events_p202613", "usage_events_p000012"):
            await conn.execute(f"CREATE TABLE {name} (LIKE usage_events)")
        run = await maintain_partitions(
            conn, retention_days=30, now=datetime(2026, 3, 10, tzinfo=UTC)
        )
        assert run == Maintenance(
            ran=True,
            created=("usage_events_p202605", "usage_events_p202606"),
            dropped=("usage_events_p202601",),
        )
        left = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relname IN"
            " ('usage_events_p202613', 'usage_events_p000012') ORDER BY 1"
        )
        assert [r["relname"] for r in left] == ["usage_events_p000012", "usage_events_p202613"]
    finally:
        await conn.close()
