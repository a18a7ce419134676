"""A budget window counts its partially priced events. Frozen SQL; later changes come as new
migrations.

A partially priced event (a usage dimension without a price: images of a model priced per
token) commits the cost of its priced part only, so a window that holds one has a committed
cost that is a lower bound, as one with an unpriced event has; the window counted the unpriced
ones only. `partially_priced_events` is kept as `unpriced_events` is: on stripe 0, by ingest
and by a reprice.

This migration only adds the column (PostgreSQL's catalog alone: its lock is held for moments);
the next one counts the current windows' events, in a transaction of its own, so that no lock
on the table is held while it reads the events. Compatible with the API of the release before,
which keeps serving while this is applied: it writes the columns it knows, and the new one
keeps its default.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-07T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "budget windows count their partially priced events: the column"

STATEMENTS = (
    """
    ALTER TABLE budget_windows
        ADD COLUMN partially_priced_events BIGINT NOT NULL DEFAULT 0
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
