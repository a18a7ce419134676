"""initialize_database(): what every service calls at start; N replicas at once must be safe."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

from aiserver.core_db.migrations import initialize_database, registered_initializers

from ..conftest import make_settings

_START = (
    "import asyncio\n"
    "from aiserver.core_db.logging import configure_logging\n"
    "from aiserver.core_db.migrations import initialize_database\n"
    "from aiserver.core_db.settings import CoreSettings, get_settings\n"
    "configure_logging('INFO', 'json')\n"
    "asyncio.run(initialize_database(get_settings(CoreSettings)))\n"
)


def test_the_costs_seed_is_a_registered_initializer() -> None:
    assert [name for name, _ in registered_initializers()] == ["costs-seed"]


async def test_four_processes_starting_together_migrate_once_and_seed_once(
    empty_database_url: str,
) -> None:
    env = dict(os.environ, DATABASE_URL=empty_database_url, LOG_FORMAT="json")
    pipe = asyncio.subprocess.PIPE
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _START, env=env, stdout=pipe, stderr=pipe
        )
        for _ in range(4)
    ]
    results = [await proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], [e for _, e in results]
    conn = await asyncpg.connect(empty_database_url)
    try:
        migrations = await conn.fetch("SELECT app_name, name FROM migration")
        runs = await conn.fetch("SELECT trigger, outcome FROM ai_cost_refresh_runs")
        models = await conn.fetchval("SELECT count(*) FROM ai_model_costs WHERE valid_to IS NULL")
        total = await conn.fetchval("SELECT count(*) FROM ai_model_costs")
    finally:
        await conn.close()
    assert len(migrations) == len(set(map(tuple, migrations)))
    assert [tuple(r) for r in runs] == [("seed", "seeded")]
    assert models > 4000
    assert total == models  # seeded once: no second set of versions


async def test_initialize_is_idempotent(empty_database_url: str) -> None:
    settings = make_settings(empty_database_url)
    first = await initialize_database(settings.core)
    second = await initialize_database(settings.core)
    assert first
    assert second == []
    conn = await asyncpg.connect(empty_database_url)
    try:
        seeded = await conn.fetchval("SELECT count(*) FROM ai_cost_refresh_runs")
    finally:
        await conn.close()
    assert seeded == 1
