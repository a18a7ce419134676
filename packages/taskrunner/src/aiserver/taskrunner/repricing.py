"""The task runner's repricing jobs: thin calls into `aiserver.ledger.repricing`.

- `reprice_usage(run_id)`: do one run that the API recorded (`REPRICE_JOB`), with the catalog in
  the database now; a run another process works on is left to it;
- `usage_reprice_task` (cron, every minute, and once at start; `REPRICE_TASK`): after a catalog
  change (a refresh, an override), reprice the unpriced events it can now price, and finish the
  runs that were cut off. It compares the catalog version with the one it last repriced for,
  so a change is repriced within a minute however it was made, and a NOTIFY lost changes
  nothing.

Each is idempotent: a run resumes after its last committed batch, and the automatic reprice
looks at each catalog version once.
"""

from __future__ import annotations

from typing import Any

from aiserver.core_db.database import require_pool
from aiserver.costs.catalog import load_catalog
from aiserver.ledger.repricing.automatic import reprice_after_catalog_change
from aiserver.ledger.repricing.execution import execute_run
from aiserver.taskrunner.jobs import Ctx, logged_job, routine_job


@logged_job
async def reprice_usage(ctx: Ctx, run_id: int) -> dict[str, Any]:
    """Do (or resume) one repricing run."""
    pool = require_pool()
    async with pool.acquire() as conn:
        catalog = await load_catalog(conn)
    outcome = await execute_run(pool, run_id, catalog)
    return {"outcome": str(outcome), "run_id": run_id}


@routine_job(
    lambda result: (
        result["outcome"] in ("already_running", "up_to_date", "nothing_unpriced")
        and not result["resumed"]
    )
)
async def usage_reprice_task(ctx: Ctx) -> dict[str, Any]:
    """Cron: the automatic reprice after a catalog change, and the runs cut off, finished."""
    report = await reprice_after_catalog_change(require_pool())
    return {
        "outcome": report.outcome,
        "catalog_version": report.catalog_version,
        "run_id": report.run_id,
        "models": list(report.models),
        "resumed": list(report.resumed),
    }
