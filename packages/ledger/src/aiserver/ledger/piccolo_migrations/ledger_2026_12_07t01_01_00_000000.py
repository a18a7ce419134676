"""The current budget windows count their partially priced events, from the events. Frozen
SQL; later changes come as new migrations.

The windows that are current when this runs (a total budget's one window, and each other
budget's window that has not ended) get the count of the partially priced events they hold, by
the rules a budget counts events by: its tags, its model as reported or as priced, the window's
time range. Only the current windows are read by anything (the API's budget answers, the
dashboard, `aiserver-ledger budgets`); the windows that ended keep 0.

The events are counted by a scan that takes no lock ingest or a reader of the budgets waits
for (the previous migration added the column, and committed); the update locks each current
window's stripe-0 row as it writes it, until the migration commits. A
partially priced event of a total budget that the retention dropped is not counted (its cost
stays in the window). An event that an API replica of the release before records after this
ran is not counted either (a reprice that later moves such an event does not take the count
below 0).
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-07T01:01:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "the current budget windows count their partially priced events"

STATEMENTS = (
    """
    WITH counted AS MATERIALIZED (
        SELECT x.project_id, x.budget_id, x.window_start, count(*) AS n
        FROM budget_windows AS x
        JOIN budgets AS b ON b.project_id = x.project_id AND b.id = x.budget_id
        JOIN usage_events AS e
          ON e.project_id = x.project_id AND e.status = 'partially_priced'
         AND e.tags @> b.tags
         AND (b.model IS NULL OR e.model = b.model OR e.matched_model = b.model)
         AND e.occurred_at >= x.window_start
         AND (x.window_end IS NULL OR e.occurred_at < x.window_end)
        WHERE x.stripe = 0 AND (x.window_end IS NULL OR x.window_end > now())
        GROUP BY x.project_id, x.budget_id, x.window_start
    )
    UPDATE budget_windows AS w SET partially_priced_events = c.n
    FROM counted AS c
    WHERE w.project_id = c.project_id AND w.budget_id = c.budget_id
      AND w.window_start = c.window_start AND w.stripe = 0
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
