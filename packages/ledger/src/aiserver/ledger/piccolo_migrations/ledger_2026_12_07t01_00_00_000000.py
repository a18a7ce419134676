"""A budget window counts its partially priced events. Frozen SQL; later changes come as new
migrations.

A partially priced event (a usage dimension without a price: images of a model priced per
token) commits the cost of its priced part only, so a window that holds one has a committed
cost that is a lower bound, as one with an unpriced event has; the window counted the unpriced
ones only. `partially_priced_events` is kept as `unpriced_events` is: on stripe 0, by ingest
and by a reprice. The windows written before this migration are counted here from the events,
by the rules a budget counts events by (its tags, its model as reported or as priced, the
window's time range).

Compatible with the API of the release before, which keeps serving while this is applied: it
writes the columns it knows, and the new one keeps its default (an event it records while the
new release rolls out is not counted as partially priced in its window).
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-07T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "budget windows count their partially priced events"

STATEMENTS = (
    """
    ALTER TABLE budget_windows
        ADD COLUMN partially_priced_events BIGINT NOT NULL DEFAULT 0
    """,
    """
    UPDATE budget_windows AS w SET partially_priced_events = c.n
    FROM (
        SELECT x.project_id, x.budget_id, x.window_start, count(*) AS n
        FROM budget_windows AS x
        JOIN budgets AS b ON b.project_id = x.project_id AND b.id = x.budget_id
        JOIN usage_events AS e
          ON e.project_id = x.project_id AND e.status = 'partially_priced'
         AND e.tags @> b.tags
         AND (b.model IS NULL OR e.model = b.model OR e.matched_model = b.model)
         AND e.occurred_at >= x.window_start
         AND (x.window_end IS NULL OR e.occurred_at < x.window_end)
        WHERE x.stripe = 0
        GROUP BY x.project_id, x.budget_id, x.window_start
    ) AS c
    WHERE w.project_id = c.project_id AND w.budget_id = c.budget_id
      AND w.window_start = c.window_start AND w.stripe = 0
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
