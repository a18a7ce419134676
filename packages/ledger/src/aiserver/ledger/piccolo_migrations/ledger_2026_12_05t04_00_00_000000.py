"""A release can come before its reservation: it keeps the id, so that the reserve that comes
later holds nothing. Frozen SQL; later changes come as new migrations.

A client whose reserve went unanswered releases by the id it chose. When that release reaches
the server before the reserve does, it now writes the id down as released, with no estimate
and no holds (`amount` NULL): the reserve of that id meets it as a repeat, holds nothing and
answers `released`. Only such a row may lack an estimate.

The CHECK is added NOT VALID: it holds for every row written from now on, and the rows already
there hold an estimate (the column was NOT NULL), so no scan of the table (which only grows)
runs under the migration's lock.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T04:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "a reservation id released before its reserve came"

STATEMENTS = (
    """
    ALTER TABLE budget_reservations
        ALTER COLUMN amount DROP NOT NULL,
        ADD CONSTRAINT budget_reservations_released_first
            CHECK (amount IS NOT NULL OR (state = 'released' AND cardinality(budget_ids) = 0))
            NOT VALID
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
