"""Ended reservations are forgotten a while after they ended. Frozen SQL; later changes come as
new migrations.

`budget_reservations` kept every reservation for ever: one row per guarded model call, and one
per release of an id that had none. The task runner's reservation sweep now deletes those that
ended (settled, released, expired) long ago (`aiserver.ledger.budgets.reservations.KEEP_ENDED`),
oldest first: this index finds them.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T06:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "an index of ended reservations, for the sweep that forgets them"

STATEMENTS = (
    """
    CREATE INDEX budget_reservations_ended ON budget_reservations (ended_at)
        WHERE state <> 'held'
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
