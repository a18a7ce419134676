"""The task-runner jobs of the ledger, by name: the task runner runs them, the API enqueues
some (and neither imports the other)."""

from typing import Final

#: The cron job that keeps the usage partitions: the coming months created, those past
#: USAGE_RETENTION_DAYS dropped (`aiserver.ledger.usage.partitions.maintain`).
PARTITIONS_TASK: Final = "usage_partitions_task"

#: Do one repricing run: `reprice_usage(run_id: int)` (the API enqueues it by name;
#: `aiserver.ledger.repricing.execution.execute_run`).
REPRICE_JOB: Final = "reprice_usage"

#: The cron job of the automatic reprice: the unpriced events a changed catalog can now price,
#: and the runs cut off, finished (`aiserver.ledger.repricing.automatic`).
REPRICE_TASK: Final = "usage_reprice_task"
