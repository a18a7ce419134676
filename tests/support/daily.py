"""The daily rollups checked against the hourly ones: every daily row is the sum of the hourly
rows whose hour lies whole in that day of the project's clock, and there is no other daily row
(an hour that straddles a midnight, in a zone at +05:30, is in none).

The day is worked out here in Python (`zoneinfo`), apart from PostgreSQL's `AT TIME ZONE` that
the triggers use, so that the two readings of the time zone are compared too."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

SUMMED: Final = (
    "events", "unpriced_events", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "cost",
)  # fmt: skip


async def assert_daily_agrees(conn: Any) -> int:
    """Assert that `usage_rollups_daily` holds exactly the hourly rollups summed per day of each
    project's time zone (every project); the number of daily rows."""
    zones = {r["id"]: ZoneInfo(r["time_zone"]) for r in await conn.fetch(
        "SELECT id, time_zone FROM projects")}  # fmt: skip
    columns = ", ".join(SUMMED)
    expected: dict[tuple[Any, ...], list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 8)
    for r in await conn.fetch(
        f"SELECT project_id, hour, model, provider, status, tags::text AS tags, {columns}"  # noqa: S608
        " FROM usage_rollups"
    ):
        zone = zones[r["project_id"]]
        day = r["hour"].astimezone(zone).date()
        if (r["hour"] + timedelta(hours=1) - timedelta(microseconds=1)).astimezone(
            zone
        ).date() != day:
            continue  # straddles a midnight of the project's clock
        sums = expected[(r["project_id"], day, r["model"], r["provider"], r["status"], r["tags"])]
        for i, name in enumerate(SUMMED):
            sums[i] += r[name]
    stored = {
        (r["project_id"], r["day"], r["model"], r["provider"], r["status"], r["tags"]): [
            Decimal(r[name]) for name in SUMMED
        ]
        for r in await conn.fetch(
            f"SELECT project_id, day, model, provider, status, tags::text AS tags, {columns}"  # noqa: S608
            " FROM usage_rollups_daily"
        )
    }
    assert stored == dict(expected), "the daily rollups differ from the hourly ones summed by day"
    return len(stored)
