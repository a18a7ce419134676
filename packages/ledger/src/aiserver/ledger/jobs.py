"""The task-runner jobs of the ledger, by name: the task runner runs them (the API enqueues none
yet, and neither imports the other)."""

from typing import Final

#: The cron job that keeps the usage partitions: the coming months created, those past
#: USAGE_RETENTION_DAYS dropped (`aiserver.ledger.usage.partitions.maintain`).
PARTITIONS_TASK: Final = "usage_partitions_task"

#: The cron job that delivers the budget alerts that are due as signed webhooks
#: (`aiserver.ledger.budgets.alerts.delivery.deliver_due`).
ALERTS_TASK: Final = "budget_alerts_task"
