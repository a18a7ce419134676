"""The task-runner jobs of the price catalog, by name: the API enqueues them, the task runner
runs them (neither imports the other)."""

from typing import Final

#: Refresh the catalog now: `refresh_costs(force: bool = False)`.
REFRESH_JOB: Final = "refresh_costs"
#: The cron job that refreshes the catalog when it is stale (CostDataUpdateTask).
UPDATE_TASK: Final = "cost_data_update_task"
