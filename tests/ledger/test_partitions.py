"""The monthly partitions of `usage_events` on a real PostgreSQL: made ahead, made by a backfill,
made once however many make them at once, and dropped whole once past the retention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from aiserver.core_db.locks import advisory_lock_key
from aiserver.ledger.access import Access
from aiserver.ledger.projects import create_project
from aiserver.ledger.spend.folding import fold_all
from aiserver.ledger.usage import partitions
from aiserver.ledger.usage.events import UsageEventIn
from aiserver.ledger.usage.ingest import IngestReport, UsageRecorder
from aiserver.ledger.usage.partitions import (
    AHEAD,
    GRACE,
    Maintenance,
    Partitions,
    maintain,
    maintain_partitions,
    month_of,
    next_month,
    retention_horizon,
)
from aiserver.ledger.usage.store import partitions as store

from ..conftest import Settings, replace_settings

NOW = datetime(2026, 12, 20, 10, 0, tzinfo=UTC)
RETENTION = 400

Connect = Callable[[], Awaitable[asyncpg.Connection]]


@pytest.fixture
async def connect(settings: Settings) -> AsyncIterator[Connect]:
    """Opens connections to the test's database (in UTC, so bounds read the same everywhere)
    and closes them after the test."""
    opened: list[asyncpg.Connection] = []

    async def open_one() -> asyncpg.Connection:
        conn = await asyncpg.connect(
            settings.core.database_url, server_settings={"timezone": "UTC"}
        )
        opened.append(conn)
        return conn

    try:
        yield open_one
    finally:
        for conn in opened:
            await conn.close()


@pytest.fixture
async def conn(connect: Connect) -> asyncpg.Connection:
    return await connect()


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(settings.core.database_url, min_size=0, max_size=12) as made:
        yield made


@pytest.fixture
async def projects(pool: asyncpg.Pool) -> tuple[int, int]:
    a = await create_project(pool, Access.operator(), slug="acme-a", name="Acme A")
    b = await create_project(pool, Access.operator(), slug="acme-b", name="Acme B")
    return a.id, b.id


async def attached(conn: asyncpg.Connection) -> dict[str, str]:
    """{partition: its bounds} of `usage_events`."""
    rows = await conn.fetch(
        """
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bounds FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'usage_events'::regclass ORDER BY c.relname
        """
    )
    return {r["relname"]: r["bounds"] for r in rows}


async def tables_like_partitions(conn: asyncpg.Connection) -> list[str]:
    """Every table named like a partition, attached or not (a detached one left over counts)."""
    rows = await conn.fetch(
        "SELECT relname FROM pg_class WHERE relname ~ '^usage_events_p' AND relkind = 'r'"
        " ORDER BY relname"
    )
    return [r["relname"] for r in rows]


def bounds(start: str, end: str) -> str:
    return f"FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')"


def event(key: str, at: datetime, tokens: int = 100) -> UsageEventIn:
    return UsageEventIn(
        id=key, model="gpt-4o", usage={"input_tokens": tokens, "output_tokens": 10}, occurred_at=at
    )


async def record(
    recorder: UsageRecorder, pool: asyncpg.Pool, project: int, *events: UsageEventIn,
    now: datetime,
) -> IngestReport:  # fmt: skip
    return await recorder.record(pool, project, list(events), catalog=None, now=now)


async def stored(conn: asyncpg.Connection) -> list[tuple[str, int, str]]:
    """(partition, project, key) of every stored event."""
    rows = await conn.fetch(
        "SELECT tableoid::regclass::text AS part, project_id, event_key FROM usage_events"
        " ORDER BY 1, 2, 3"
    )
    return [(r["part"], r["project_id"], r["event_key"]) for r in rows]


async def keys(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    rows = await conn.fetch("SELECT project_id, key FROM usage_idempotency ORDER BY 1, 2")
    return [(r["project_id"], r["key"]) for r in rows]


# -- months ---------------------------------------------------------------------------------------


def test_a_month_is_a_calendar_month_in_utc() -> None:
    berlin_new_year = datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert month_of(berlin_new_year) == datetime(2026, 12, 1, tzinfo=UTC)  # 23:30 UTC
    assert month_of(datetime(2027, 1, 1, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_month(datetime(2026, 12, 1, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert partitions.partition_name(datetime(2027, 3, 1, tzinfo=UTC)) == "usage_events_p202703"
    assert partitions.month_of_partition("usage_events_p202703") == datetime(2027, 3, 1, tzinfo=UTC)
    for other in ("usage_events", "usage_events_p2027031", "usage_events_pabcdef", "usage_x"):
        assert partitions.month_of_partition(other) is None


def test_retention_never_drops_a_month_that_ingest_still_accepts() -> None:
    """Ingest accepts an event from `now - retention` on; every month before the horizon ended
    at least a day (`GRACE`) before that, at any hour of a year and any retention."""
    for retention in (1, 2, 30, 31, 400):
        for hour in range(0, 366 * 24, 7):
            now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hour)
            horizon = retention_horizon(now, retention)
            oldest_accepted = now - timedelta(days=retention)
            assert horizon <= oldest_accepted - GRACE, (now, retention)
            assert horizon > oldest_accepted - GRACE - timedelta(days=31), (now, retention)
            assert horizon <= month_of(now)  # never this month, whatever the retention


# -- made ahead -----------------------------------------------------------------------------------


async def test_maintenance_makes_this_month_and_the_next_three_and_a_rerun_changes_nothing(
    conn: asyncpg.Connection,
) -> None:
    assert await attached(conn) == {}
    first = await maintain_partitions(conn, retention_days=RETENTION, now=NOW)
    assert first == Maintenance(
        ran=True,
        created=(
            "usage_events_p202612", "usage_events_p202701", "usage_events_p202702",
            "usage_events_p202703",
        ),
    )  # fmt: skip
    assert AHEAD == 3
    expected = {
        "usage_events_p202612": bounds("2026-12-01", "2027-01-01"),
        "usage_events_p202701": bounds("2027-01-01", "2027-02-01"),
        "usage_events_p202702": bounds("2027-02-01", "2027-03-01"),
        "usage_events_p202703": bounds("2027-03-01", "2027-04-01"),
    }
    assert await attached(conn) == expected
    again = await maintain_partitions(conn, retention_days=RETENTION, now=NOW)
    assert again == Maintenance(ran=True)
    assert again.as_dict() == {
        "outcome": "done", "created": [], "dropped": [], "postponed": [], "unfolded": [],
        "keys_forgotten": 0,
    }  # fmt: skip
    # a month later: one more month ahead, nothing dropped
    later = await maintain_partitions(conn, retention_days=RETENTION, now=NOW + timedelta(days=31))
    assert later == Maintenance(ran=True, created=("usage_events_p202704",))
    assert await attached(conn) == {
        **expected,
        "usage_events_p202704": bounds("2027-04-01", "2027-05-01"),
    }


async def test_a_partition_gets_the_primary_key_the_indexes_and_the_checks_of_usage_events(
    conn: asyncpg.Connection,
) -> None:
    await maintain_partitions(conn, retention_days=RETENTION, now=NOW)
    indexes = await conn.fetch(
        """
        SELECT ci.relname AS index, parent.relname AS parent, x.indisprimary AS primary,
               pg_get_indexdef(x.indexrelid) AS definition
        FROM pg_index x
        JOIN pg_class ci ON ci.oid = x.indexrelid
        JOIN pg_inherits ih ON ih.inhrelid = x.indexrelid
        JOIN pg_class parent ON parent.oid = ih.inhparent
        WHERE x.indrelid = 'usage_events_p202612'::regclass
        ORDER BY 1
        """
    )
    assert [dict(r) for r in indexes] == [
        {
            "index": "usage_events_p202612_model_provider_project_id_idx",
            "parent": "usage_events_unpriced",
            "primary": False,
            "definition": "CREATE INDEX usage_events_p202612_model_provider_project_id_idx ON "
            "public.usage_events_p202612 USING btree (model, provider, project_id) "
            "WHERE (status = 'unpriced'::text)",
        },
        {
            "index": "usage_events_p202612_pkey",
            "parent": "usage_events_pkey",
            "primary": True,
            "definition": "CREATE UNIQUE INDEX usage_events_p202612_pkey ON "
            "public.usage_events_p202612 USING btree (project_id, occurred_at, id)",
        },
        {
            "index": "usage_events_p202612_project_id_id_idx",
            "parent": "usage_events_by_id",
            "primary": False,
            "definition": "CREATE INDEX usage_events_p202612_project_id_id_idx ON "
            "public.usage_events_p202612 USING btree (project_id, id)",
        },
        {
            "index": "usage_events_p202612_tags_idx",
            "parent": "usage_events_by_tags",
            "primary": False,
            "definition": "CREATE INDEX usage_events_p202612_tags_idx ON "
            "public.usage_events_p202612 USING gin (tags jsonb_path_ops)",
        },
    ]
    checks = """
        SELECT pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conrelid = $1::regclass AND contype = 'c' ORDER BY 1
    """
    parent = [r[0] for r in await conn.fetch(checks, "usage_events")]
    assert len(parent) == 2
    assert [r[0] for r in await conn.fetch(checks, "usage_events_p202612")] == parent
    # the primary key holds across the partition: one (project, time, id) once
    row = (1, NOW, 7, NOW, "k", "m", "standard", 0, 0, 0, 0, 0, "{}", "unpriced")
    insert = """
        INSERT INTO usage_events (project_id, occurred_at, id, received_at, event_key, model,
            service_tier, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
            reasoning_tokens, tags, status)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
    """
    await conn.execute(insert, *row)
    with pytest.raises(asyncpg.UniqueViolationError, match="usage_events_p202612_pkey"):
        await conn.execute(insert, *row)


# -- made at once by many -------------------------------------------------------------------------


async def test_two_connections_ensuring_one_new_month_create_it_once(connect: Connect) -> None:
    september = datetime(2026, 9, 1, tzinfo=UTC)
    first, second = await connect(), await connect()
    await asyncio.gather(
        Partitions().ensure(first, [september]), Partitions().ensure(second, [september])
    )
    assert await attached(first) == {"usage_events_p202609": bounds("2026-09-01", "2026-10-01")}
    # at the store, eight at once: exactly one of them creates it, and none fails
    conns = [await connect() for _ in range(8)]
    october, november = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    made = await asyncio.gather(
        *(store.create_partition(c, "usage_events_p202610", october, november) for c in conns)
    )
    assert sorted(made) == [False] * 7 + [True]
    assert await tables_like_partitions(first) == ["usage_events_p202609", "usage_events_p202610"]


async def test_ingest_racing_the_cron_for_the_same_months_records_every_event_once(
    settings: Settings,
    conn: asyncpg.Connection,
    pool: asyncpg.Pool,
    projects: tuple[int, int],
) -> None:
    """Six API processes record at once, each an event of this month (which the cron makes) and
    a backfill of June (which nobody made), while the cron runs."""
    project = projects[0]
    recorders = [UsageRecorder(settings.ledger) for _ in range(6)]
    reports_and_run = await asyncio.gather(
        maintain(settings.core, settings.ledger, now=NOW),
        *(
            record(
                r, pool, project,
                event(f"now-{i}", NOW - timedelta(hours=1)),
                event(f"june-{i}", datetime(2026, 6, 15, tzinfo=UTC)),
                now=NOW,
            )
            for i, r in enumerate(recorders)
        ),
    )  # fmt: skip
    run, reports = reports_and_run[0], reports_and_run[1:]
    assert isinstance(run, Maintenance)
    assert [(r.recorded, r.invalid) for r in reports if isinstance(r, IngestReport)] == [(2, 0)] * 6
    # the cron alone makes the months ahead; this month, whoever came first
    assert set(run.created) - {"usage_events_p202612"} == {
        "usage_events_p202701", "usage_events_p202702", "usage_events_p202703",
    }  # fmt: skip
    assert list(await attached(conn)) == [
        "usage_events_p202606", "usage_events_p202612", "usage_events_p202701",
        "usage_events_p202702", "usage_events_p202703",
    ]  # fmt: skip
    assert await stored(conn) == sorted(
        [("usage_events_p202606", project, f"june-{i}") for i in range(6)]
        + [("usage_events_p202612", project, f"now-{i}") for i in range(6)]
    )


async def test_a_second_maintenance_while_one_runs_skips(
    settings: Settings, conn: asyncpg.Connection, connect: Connect
) -> None:
    other = await connect()
    lock = advisory_lock_key(partitions.MAINTENANCE_LOCK)
    await other.execute("SELECT pg_advisory_lock($1)", lock)
    try:
        assert await maintain(settings.core, settings.ledger, now=NOW) == Maintenance(ran=False)
        assert await attached(conn) == {}
    finally:
        await other.execute("SELECT pg_advisory_unlock($1)", lock)
    done = await maintain(settings.core, settings.ledger, now=NOW)
    assert (done.outcome, len(done.created)) == ("done", AHEAD + 1)


# -- backfill -------------------------------------------------------------------------------------


async def test_a_backfill_within_the_retention_is_recorded_in_its_own_month_and_kept(
    settings: Settings, conn: asyncpg.Connection, pool: asyncpg.Pool, projects: tuple[int, int]
) -> None:
    recorder = UsageRecorder(settings.ledger)
    oldest = NOW - timedelta(days=RETENTION)  # 2025-11-15 10:00: the oldest time accepted
    report = await record(
        recorder, pool, projects[0],
        event("january", datetime(2026, 1, 15, 8, tzinfo=UTC)),
        event("oldest", oldest),
        event("too-old", oldest - timedelta(microseconds=1)),
        now=NOW,
    )  # fmt: skip
    assert [r.status for r in report.results] == ["recorded", "recorded", "invalid"]
    assert report.results[2].problem is not None
    assert "older than the retention of 400 days" in report.results[2].problem["detail"]
    assert await stored(conn) == [
        ("usage_events_p202511", projects[0], "oldest"),
        ("usage_events_p202601", projects[0], "january"),
    ]
    run = await maintain_partitions(conn, retention_days=RETENTION, now=NOW)
    assert (run.dropped, run.keys_forgotten) == ((), 0)
    assert list(await attached(conn)) == [
        "usage_events_p202511", "usage_events_p202601", "usage_events_p202612",
        "usage_events_p202701", "usage_events_p202702", "usage_events_p202703",
    ]  # fmt: skip


# -- retention ------------------------------------------------------------------------------------

T0 = datetime(2026, 2, 20, tzinfo=UTC)  # ingest accepts from 2025-01-16 on
T1 = datetime(2026, 5, 7, tzinfo=UTC)  # T1 - 400 days - GRACE = 2025-04-01 exactly
BEFORE_T1 = T1 - timedelta(microseconds=1)
MONTHS = {
    "jan": datetime(2025, 1, 20, 8, tzinfo=UTC),
    "feb": datetime(2025, 2, 10, 12, tzinfo=UTC),
    "mar": datetime(2025, 3, 31, 23, 59, 59, 999999, tzinfo=UTC),
    "apr": datetime(2025, 4, 1, tzinfo=UTC),
    "now": datetime(2026, 2, 19, 10, tzinfo=UTC),
}


async def _a_year_of_usage(
    settings: Settings, conn: asyncpg.Connection, pool: asyncpg.Pool, projects: tuple[int, int],
    *, folded: bool = True,
) -> UsageRecorder:  # fmt: skip
    """At T0: the partitions made ahead, and an event of each of MONTHS for both projects,
    folded into the rollups unless told otherwise (retention keeps a month until it is)."""
    assert T1 - timedelta(days=RETENTION) - GRACE == datetime(2025, 4, 1, tzinfo=UTC)
    await maintain_partitions(conn, retention_days=RETENTION, now=T0)
    recorder = UsageRecorder(settings.ledger)
    for project in projects:
        report = await record(
            recorder, pool, project, *(event(k, at) for k, at in MONTHS.items()), now=T0
        )
        assert report.recorded == 5
    if folded:
        assert (await fold_all(conn)).events == 10
    return recorder


async def rolled_up(conn: asyncpg.Connection) -> list[tuple[str, int, int]]:
    """(month, project, events) the hourly rollups count."""
    rows = await conn.fetch(
        "SELECT to_char(hour AT TIME ZONE 'UTC', 'YYYYMM') AS month, project_id, sum(events)"
        " AS events FROM usage_rollups GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return [(r["month"], r["project_id"], int(r["events"])) for r in rows]


async def test_retention_drops_exactly_the_months_past_it_and_forgets_their_keys(
    settings: Settings, conn: asyncpg.Connection, pool: asyncpg.Pool, projects: tuple[int, int]
) -> None:
    recorder = await _a_year_of_usage(settings, conn, pool, projects)
    a, b = projects
    before = await attached(conn)
    assert list(before) == [
        "usage_events_p202501", "usage_events_p202502", "usage_events_p202503",
        "usage_events_p202504", "usage_events_p202602", "usage_events_p202603",
        "usage_events_p202604", "usage_events_p202605",
    ]  # fmt: skip
    counts = "SELECT (SELECT count(*) FROM usage_outbox), (SELECT count(*) FROM projects)"
    assert tuple(await conn.fetchrow(counts)) == (0, 2)
    counted = await rolled_up(conn)
    assert len(counted) == 10

    # A microsecond before T1, March ended less than 400 days and a day ago: it stays.
    run = await maintain_partitions(conn, retention_days=RETENTION, now=BEFORE_T1)
    assert run == Maintenance(
        ran=True,
        created=("usage_events_p202606", "usage_events_p202607", "usage_events_p202608"),
        dropped=("usage_events_p202501", "usage_events_p202502"),
        keys_forgotten=4,
    )
    assert ("usage_events_p202503" in await attached(conn)) is True
    # At T1 March goes too; April (which began at the cutoff) stays.
    run = await maintain_partitions(conn, retention_days=RETENTION, now=T1)
    assert run == Maintenance(ran=True, dropped=("usage_events_p202503",), keys_forgotten=2)
    assert await tables_like_partitions(conn) == [
        "usage_events_p202504", "usage_events_p202602", "usage_events_p202603",
        "usage_events_p202604", "usage_events_p202605", "usage_events_p202606",
        "usage_events_p202607", "usage_events_p202608",
    ]  # fmt: skip
    assert await stored(conn) == [
        ("usage_events_p202504", a, "apr"), ("usage_events_p202504", b, "apr"),
        ("usage_events_p202602", a, "now"), ("usage_events_p202602", b, "now"),
    ]  # fmt: skip
    assert await keys(conn) == [(a, "apr"), (a, "now"), (b, "apr"), (b, "now")]
    # the rollups keep counting the dropped events, and the tenants stay
    assert await rolled_up(conn) == counted
    assert tuple(await conn.fetchrow(counts)) == (0, 2)
    assert await conn.fetchval("SELECT count(*) FROM usage_events") == 4

    # A dropped event sent again is refused as too old, not recorded a second time; a kept one
    # is a duplicate of what was recorded.
    again = await record(
        recorder, pool, a, event("feb", MONTHS["feb"]), event("now", MONTHS["now"]), now=T1
    )
    assert [r.status for r in again.results] == ["invalid", "duplicate"]
    problem = again.results[0].problem
    assert problem is not None
    assert problem["fields"] == ["occurred_at"]
    assert "older than the retention of 400 days" in problem["detail"]
    assert await conn.fetchval("SELECT count(*) FROM usage_events") == 4
    assert await keys(conn) == [(a, "apr"), (a, "now"), (b, "apr"), (b, "now")]
    # and nothing more to do
    assert await maintain_partitions(conn, retention_days=RETENTION, now=T1) == Maintenance(
        ran=True
    )


async def test_a_month_is_dropped_only_once_its_events_are_folded_into_the_rollups(
    settings: Settings, conn: asyncpg.Connection, pool: asyncpg.Pool, projects: tuple[int, int]
) -> None:
    """The rollups outlive the events: while the outbox holds events of a month past the
    retention (the folds are behind, or stopped), its drop is put off, with a warning, and so
    are the keys from it on; once they are folded, the next run drops it. Before, it was
    dropped with them, and the rollups never counted them (the folder deleted their outbox
    rows as orphaned)."""
    await _a_year_of_usage(settings, conn, pool, projects, folded=False)
    with capture_logs() as logs:
        run = await maintain_partitions(conn, retention_days=RETENTION, now=T1)
    old = ("usage_events_p202501", "usage_events_p202502", "usage_events_p202503")
    assert run == Maintenance(
        ran=True,
        created=("usage_events_p202606", "usage_events_p202607", "usage_events_p202608"),
        unfolded=old,
    )
    assert [e["partition"] for e in logs if "not folded" in e["event"]] == list(old)
    assert await conn.fetchval("SELECT count(*) FROM usage_events") == 10
    assert len(await keys(conn)) == 10
    # a's events of January and February folded (their outbox rows gone, as the folder leaves
    # them): every old month still holds b's
    a, b = projects
    await conn.execute(
        "DELETE FROM usage_outbox WHERE project_id = $1 AND occurred_at < $2",
        a,
        datetime(2025, 3, 1, tzinfo=UTC),
    )  # fmt: skip
    run = await maintain_partitions(conn, retention_days=RETENTION, now=T1)
    assert run == Maintenance(ran=True, unfolded=old)
    # the folds catch up (a's two rows as if folded already): the next run drops them all
    await conn.execute("DELETE FROM usage_outbox WHERE project_id = $1", a)
    assert (await fold_all(conn)).events == 5  # b's
    run = await maintain_partitions(conn, retention_days=RETENTION, now=T1)
    assert run == Maintenance(ran=True, dropped=old, keys_forgotten=6)
    assert [k for k in await keys(conn) if k[0] == b] == [(b, "apr"), (b, "now")]
    assert [m for m, project, _ in await rolled_up(conn) if project == b] == [
        "202501", "202502", "202503", "202504", "202602",
    ]  # fmt: skip


async def test_keys_are_forgotten_in_batches(
    settings: Settings,
    conn: asyncpg.Connection,
    pool: asyncpg.Pool,
    projects: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _a_year_of_usage(settings, conn, pool, projects)
    batches: list[int] = []
    forget = store.forget_keys

    async def counted(conn: Any, before: datetime, limit: int) -> int:
        batches.append(count := await forget(conn, before, limit))
        return count

    monkeypatch.setattr(partitions, "KEY_BATCH", 4)
    monkeypatch.setattr(store, "forget_keys", counted)
    run = await maintain_partitions(conn, retention_days=RETENTION, now=T1)
    assert (run.dropped, run.keys_forgotten) == (
        ("usage_events_p202501", "usage_events_p202502", "usage_events_p202503"),
        6,
    )
    assert batches == [4, 2, 0]


async def table_states(conn: asyncpg.Connection) -> dict[str, str]:
    """Each usage table's state: attached, detaching (pending) or detached."""
    return {t.name: t.state for t in await store.usage_tables(conn)}


async def until_detaching(conn: asyncpg.Connection, name: str) -> None:
    """Wait (at most 10 s) until a DETACH ... CONCURRENTLY of `name` has marked it pending and
    waits for the transactions that use `usage_events`."""
    for _ in range(200):
        states = await table_states(conn)
        if states[name] == "detaching":
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{name} was not marked detach pending within 10 s: {states}")


async def january_detaching_february_detached(conn: asyncpg.Connection, connect: Connect) -> None:
    """January 2025 left pending detach (a run cut off while its detach waited for a reader:
    arq's timeout, a shutdown) and February detached whole (a run that stopped, or a detach by
    hand, between detach and drop)."""
    reader = await connect()
    async with reader.transaction():
        assert await reader.fetchval("SELECT count(*) FROM usage_events") == 10
        detacher = await connect()
        detaching = asyncio.create_task(store.detach_partition(detacher, "usage_events_p202501"))
        await until_detaching(conn, "usage_events_p202501")
        assert await conn.fetchval("SELECT pg_cancel_backend($1)", detacher.get_server_pid())
        with pytest.raises(asyncpg.QueryCanceledError):
            await detaching
    await conn.execute("ALTER TABLE usage_events DETACH PARTITION usage_events_p202502")
    states = await table_states(conn)
    assert (states["usage_events_p202501"], states["usage_events_p202502"]) == (
        "detaching",
        "detached",
    )


async def test_an_interrupted_detach_and_a_detached_leftover_are_finished_by_the_next_run(
    settings: Settings,
    conn: asyncpg.Connection,
    connect: Connect,
    pool: asyncpg.Pool,
    projects: tuple[int, int],
) -> None:
    await _a_year_of_usage(settings, conn, pool, projects)
    await january_detaching_february_detached(conn, connect)
    run = await maintain_partitions(conn, retention_days=RETENTION, now=T1)
    assert (run.dropped, run.keys_forgotten) == (
        ("usage_events_p202501", "usage_events_p202502", "usage_events_p202503"),
        6,
    )
    assert (await tables_like_partitions(conn))[0] == "usage_events_p202504"


async def test_a_concurrent_detach_that_waits_for_a_reader_does_not_hold_up_ingest(
    settings: Settings,
    conn: asyncpg.Connection,
    connect: Connect,
    pool: asyncpg.Pool,
    projects: tuple[int, int],
) -> None:
    """While a concurrent detach waits for a reader, it holds no lock on `usage_events`: ingest
    records into this month, and a backfill creates its month and records, meanwhile; the
    detach then finishes."""
    recorder = await _a_year_of_usage(settings, conn, pool, projects)
    reader = await connect()
    transaction = reader.transaction()
    await transaction.start()
    try:
        await reader.fetchval("SELECT count(*) FROM usage_events")
        running = asyncio.create_task(
            maintain_partitions(await connect(), retention_days=RETENTION, now=T1)
        )
        await until_detaching(conn, "usage_events_p202501")
        august = datetime(2025, 8, 10, tzinfo=UTC)
        report = await asyncio.wait_for(
            record(
                recorder, pool, projects[0], event("meanwhile", T1), event("august", august),
                now=T1,
            ),
            5,
        )  # fmt: skip
        assert [r.status for r in report.results] == ["recorded", "recorded"]
        assert running.done() is False
    finally:
        await transaction.rollback()
    run = await asyncio.wait_for(running, 30)
    assert run.dropped == ("usage_events_p202501", "usage_events_p202502", "usage_events_p202503")
    assert [e for e in await stored(conn) if e[2] in ("meanwhile", "august")] == [
        ("usage_events_p202508", projects[0], "august"),
        ("usage_events_p202605", projects[0], "meanwhile"),
    ]


async def test_without_concurrent_detach_a_drop_waits_briefly_then_is_put_off(
    settings: Settings,
    conn: asyncpg.Connection,
    connect: Connect,
    pool: asyncpg.Pool,
    projects: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Citus's way (no DETACH ... CONCURRENTLY): each old partition dropped in one statement
    under a lock timeout; one that a reader keeps busy is put off, and so are the keys from its
    month on."""
    await _a_year_of_usage(settings, conn, pool, projects)
    monkeypatch.setattr(partitions, "DROP_LOCK_TIMEOUT_MS", 200)
    reader = await connect()
    async with reader.transaction():
        await reader.fetchval("SELECT count(*) FROM usage_events_p202502")
        run = await maintain_partitions(conn, retention_days=RETENTION, now=T1, concurrently=False)
    a, b = projects
    assert run == Maintenance(
        ran=True,
        created=("usage_events_p202606", "usage_events_p202607", "usage_events_p202608"),
        dropped=("usage_events_p202501", "usage_events_p202503"),
        postponed=("usage_events_p202502",),
        keys_forgotten=2,
    )
    assert [k for k in await keys(conn) if k[1] in ("jan", "feb", "mar")] == [
        (a, "feb"), (a, "mar"), (b, "feb"), (b, "mar"),
    ]  # fmt: skip
    run = await maintain_partitions(conn, retention_days=RETENTION, now=T1, concurrently=False)
    assert run == Maintenance(ran=True, dropped=("usage_events_p202502",), keys_forgotten=4)
    assert (await tables_like_partitions(conn))[0] == "usage_events_p202504"
    assert await keys(conn) == [(a, "apr"), (a, "now"), (b, "apr"), (b, "now")]


async def test_the_retention_setting_is_the_one_the_cron_uses(
    settings: Settings, conn: asyncpg.Connection
) -> None:
    await maintain_partitions(conn, retention_days=RETENTION, now=T0)
    short = replace_settings(settings, usage_retention_days=30)
    # 2026-04-02 - 30 days - GRACE = 2026-03-02: February goes, March stays
    run = await maintain(short.core, short.ledger, now=datetime(2026, 4, 2, tzinfo=UTC))
    assert run.dropped == ("usage_events_p202602",)
