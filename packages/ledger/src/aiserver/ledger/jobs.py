"""The task-runner jobs of the ledger, by name: the task runner runs them, the API enqueues
`REBUILD_JOB` and `REPRICE_JOB` (and neither imports the other)."""

from datetime import datetime
from typing import Final

#: The cron job that keeps the usage partitions: the coming months created, those past
#: USAGE_RETENTION_DAYS dropped (`aiserver.ledger.usage.partitions.maintain`).
PARTITIONS_TASK: Final = "usage_partitions_task"
#: The cron job that folds the outbox into the hourly rollups every few seconds
#: (`aiserver.ledger.spend.folding.fold_all`).
FOLD_TASK: Final = "usage_fold_task"
#: `rebuild_rollups(project_id)`: a project's rollups made again after its rolled-up tag keys
#: changed (`aiserver.ledger.spend.rebuild.rebuild_rollups`).
REBUILD_JOB: Final = "rebuild_rollups"


def rebuild_job_id(project_id: int, changed_at: datetime) -> str:
    """One job per change: the same change enqueued twice is one job, and a later change is a
    job of its own (a fixed id per project would be refused while arq keeps the last result)."""
    return f"{REBUILD_JOB}:{project_id}:{changed_at.isoformat()}"


#: Do one repricing run: `reprice_usage(run_id: int)` (the API enqueues it by name;
#: `aiserver.ledger.repricing.execution.execute_run`).
REPRICE_JOB: Final = "reprice_usage"

#: The cron job of the automatic reprice: the unpriced events a changed catalog can now price,
#: and the runs cut off, finished (`aiserver.ledger.repricing.automatic`).
REPRICE_TASK: Final = "usage_reprice_task"

#: The cron job that releases the reservations whose expiry passed unsettled
#: (`aiserver.ledger.budgets.reservations.release_expired`).
RESERVATIONS_TASK: Final = "budget_reservations_sweep_task"

#: The cron job that delivers the budget alerts that are due as signed webhooks
#: (`aiserver.ledger.budgets.alerts.delivery.deliver_due`).
ALERTS_TASK: Final = "budget_alerts_task"
