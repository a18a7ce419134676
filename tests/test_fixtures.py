"""The database fixtures of tests/conftest.py mean what their names say: a migrated database is
a clone of one migrated template, yet each test's own; an empty one is empty; a seeded one holds
what a seed writes; nothing can connect to a template, so cloning it never meets a session. And
`structlog.testing.capture_logs` sees a logger's lines whichever tests used it before."""

from __future__ import annotations

import os

import asyncpg
import pytest
from structlog.testing import capture_logs

from aiserver.core_db.logging import configure_logging, get_logger
from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.refresh import seed_from_snapshot

from .conftest import (
    Settings,
    create_database,
    drop_database,
    pytest_xdist_auto_num_workers,
    worker_redis_url,
)
from .support.catalog import fetch_all, fetch_one
from .support.ports import free_port, worker_ports

TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
CATALOG = """
    SELECT model, provider, entry_hash, opened_in_version, closed_in_version
    FROM ai_model_costs ORDER BY model, provider
"""


async def test_an_empty_database_has_no_table(empty_database_url: str) -> None:
    assert await fetch_all(empty_database_url, TABLES) == []


async def test_a_migrated_database_is_at_head_and_holds_no_data(settings: Settings) -> None:
    url = settings.core.database_url
    assert await apply_migrations(settings.core) == []  # nothing pending
    assert {"ai_model_costs", "documents", "migration"} <= {
        r["tablename"] for r in await fetch_all(url, TABLES)
    }
    assert (await fetch_one(url, "SELECT count(*) FROM ai_model_costs"))[0] == 0
    assert (await fetch_one(url, "SELECT count(*) FROM ai_cost_refresh_runs"))[0] == 0


async def test_each_test_gets_a_clone_of_its_own(
    migrated_database_url: str, migrated_template_url: str
) -> None:
    """What one test writes stays in its clone: the next clone starts from the template."""
    assert migrated_database_url != migrated_template_url
    conn = await asyncpg.connect(migrated_database_url)
    try:
        await conn.execute("CREATE TABLE written_by_a_test (x int)")
    finally:
        await conn.close()
    other = await create_database(template=migrated_template_url)
    try:
        assert "written_by_a_test" not in {r["tablename"] for r in await fetch_all(other, TABLES)}
    finally:
        await drop_database(other)


async def test_nothing_can_connect_to_a_template(migrated_template_url: str) -> None:
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="not currently accepting"):
        await asyncpg.connect(migrated_template_url)


async def test_a_seeded_clone_holds_what_a_seed_writes(
    seeded_settings: Settings, settings: Settings
) -> None:
    report = await seed_from_snapshot(settings.core)
    assert report is not None
    assert await seed_from_snapshot(seeded_settings.core) is None  # seeded already
    seeded, fresh = seeded_settings.core.database_url, settings.core.database_url
    assert await fetch_all(seeded, CATALOG) == await fetch_all(fresh, CATALOG)
    for query in (
        "SELECT trigger, outcome, added, catalog_version FROM ai_cost_refresh_runs",
        "SELECT model_count, catalog_version, content_hash, url FROM ai_cost_metadata",
        "SELECT alias, target FROM ai_model_aliases ORDER BY alias",
    ):
        assert await fetch_all(seeded, query) == await fetch_all(fresh, query), query
    assert (await fetch_one(seeded, "SELECT model_count FROM ai_cost_metadata"))[0] == (
        report.model_count
    )


def test_a_logger_used_before_the_logging_was_configured_again_is_captured() -> None:
    """A test that starts an app configures the logging again (another level, a new list of
    processors). A logger cached on its first use before that kept the old list, which
    `capture_logs` does not touch: a later test's capture missed its lines, depending on the
    order the tests ran in (tests/conftest.py turns the cache off)."""
    log = get_logger("tests.fixtures.cache")
    configure_logging("INFO", "json")
    log.info("a first use, as an earlier test's")
    configure_logging("DEBUG", "json")
    try:
        with capture_logs() as logs:
            log.warning("seen")
    finally:
        configure_logging("INFO", "console")  # as tests/core_db/test_logging.py leaves it
    assert [entry["event"] for entry in logs] == ["seen"]


@pytest.mark.parametrize(
    ("url", "worker", "expected"),
    [
        ("redis://127.0.0.1:6379/13", "", "redis://127.0.0.1:6379/13"),
        ("redis://127.0.0.1:6379/13", "gw0", "redis://127.0.0.1:6379/13"),
        ("redis://127.0.0.1:6379/13", "gw1", "redis://127.0.0.1:6379/14"),
        ("redis://:pw@cache:6380", "gw3", "redis://:pw@cache:6380/3"),
    ],
)
def test_each_parallel_worker_has_a_redis_database_of_its_own(
    url: str, worker: str, expected: str
) -> None:
    assert worker_redis_url(url, worker) == expected


def test_a_worker_past_the_16_databases_of_redis_is_refused_saying_why() -> None:
    with pytest.raises(RuntimeError, match="would need Redis database 16, past the 16"):
        worker_redis_url("redis://127.0.0.1:6379/13", "gw3")


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/13?db=5", "unix:///run/redis.sock?db=13", "redis://h/x"]
)
def test_a_redis_url_whose_index_is_not_its_path_is_refused_saying_how(url: str) -> None:
    with pytest.raises(RuntimeError, match="give it as redis://HOST:PORT/INDEX"):
        worker_redis_url(url, "gw1")


@pytest.mark.parametrize(
    ("cpus", "url", "workers"),
    [(2, "redis://h/13", 2), (8, "redis://h/13", 3), (8, "redis://h/0", 8), (1, "redis://h/15", 1)],
)
def test_parallel_workers_are_one_per_cpu_within_the_redis_databases(
    monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config, cpus: int, url: str, workers: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(cpus)))
    monkeypatch.setenv("TEST_REDIS_URL", url)
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    assert pytest_xdist_auto_num_workers(pytestconfig) == workers


def test_parallel_workers_draw_ports_from_ranges_of_their_own_below_the_ephemeral_ones() -> None:
    ranges = [worker_ports(f"gw{n}") for n in range(11)]
    assert worker_ports("") == ranges[0]
    assert all(set(a).isdisjoint(b) for i, a in enumerate(ranges) for b in ranges[i + 1 :])
    assert max(r[-1] for r in ranges) < 32768  # Linux hands out ephemeral ports from 32768
    given = {free_port() for _ in range(50)}
    assert len(given) == 50  # never the same port twice
    mine = worker_ports(os.environ.get("PYTEST_XDIST_WORKER", ""))
    assert given <= set(mine)
