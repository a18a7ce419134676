"""A reprice run carried out as the task runner's job does it, from a test: a pool of its own on
the served database, and the catalog as that database holds it now."""

from __future__ import annotations

import asyncpg

from aiserver.costs.catalog import load_catalog
from aiserver.ledger.repricing.execution import Outcome, execute_run


async def execute_as_the_job(database_url: str, run_id: int) -> Outcome:
    """Execute reprice run `run_id` on `database_url` as the job would, and say how it ended."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            catalog = await load_catalog(conn)
        return await execute_run(pool, run_id, catalog)
    finally:
        await pool.close()
