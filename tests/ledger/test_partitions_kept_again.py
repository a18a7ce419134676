"""A month that retention began to drop, kept after all: USAGE_RETENTION_DAYS raised after a run
that stopped between detaching a partition and dropping it. The next maintenance attaches the
month again, its events and all, and ingest records into it."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from aiserver.ledger.spend.folding import fold_all
from aiserver.ledger.usage.ingest import UsageRecorder
from aiserver.ledger.usage.partitions import maintain_partitions

from ..conftest import Settings, replace_settings
from .test_partitions import (
    RETENTION,
    T1,
    Connect,
    _a_year_of_usage,
    event,
    january_detaching_february_detached,
    record,
    stored,
    table_states,
)
from .test_partitions import conn as conn  # the fixtures
from .test_partitions import connect as connect
from .test_partitions import pool as pool
from .test_partitions import projects as projects

#: Long enough that January 2025 is kept again at T1.
RAISED = 800


async def test_a_month_left_detaching_and_kept_by_a_raised_retention_is_attached_again(
    settings: Settings,
    conn: asyncpg.Connection,
    connect: Connect,
    pool: asyncpg.Pool,
    projects: tuple[int, int],
) -> None:
    await _a_year_of_usage(settings, conn, pool, projects)
    await january_detaching_february_detached(conn, connect)

    # The operator raises the retention: both months are kept now, and the next run attaches
    # them again as they are.
    run = await maintain_partitions(conn, retention_days=RAISED, now=T1)
    assert run.dropped == ()
    assert {"usage_events_p202501", "usage_events_p202502"} <= set(run.created)
    after = await table_states(conn)
    assert (after["usage_events_p202501"], after["usage_events_p202502"]) == (
        "attached",
        "attached",
    )
    a, b = projects
    assert [e for e in await stored(conn) if e[2] in ("jan", "feb")] == [
        ("usage_events_p202501", a, "jan"), ("usage_events_p202501", b, "jan"),
        ("usage_events_p202502", a, "feb"), ("usage_events_p202502", b, "feb"),
    ]  # fmt: skip

    # Ingest, which accepts January again, records into it.
    recorder = UsageRecorder(replace_settings(settings, usage_retention_days=RAISED).ledger)
    report = await record(
        recorder, pool, a, event("jan-again", datetime(2025, 1, 21, tzinfo=UTC)), now=T1
    )
    assert [r.status for r in report.results] == ["recorded"]
    assert ("usage_events_p202501", a, "jan-again") in await stored(conn)
    # and the retention as it was drops them again, whole, once the new event is folded
    assert (await fold_all(conn)).events == 1
    run = await maintain_partitions(conn, retention_days=RETENTION, now=T1)
    assert run.dropped == ("usage_events_p202501", "usage_events_p202502", "usage_events_p202503")
