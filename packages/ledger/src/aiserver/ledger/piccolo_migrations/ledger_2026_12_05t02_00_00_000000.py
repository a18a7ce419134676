"""A release may come before its reservation: it leaves a mark that the reserve then meets.
Frozen SQL; later changes come as new migrations.

A client whose reserve went unanswered releases the reservation by the id it chose. That
release can reach the API before the reserve commits (the reserve was slow, not lost): it found
nothing, and the reservation made a moment later was held until it expired. Now such a release
writes the reservation's row itself, `released`, holding nothing (an amount of 0, no budgets);
the reserve that arrives later meets that row on the primary key and holds nothing. Only such a
row may have an amount of 0.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T02:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "a release before its reservation leaves a released row that holds nothing"

STATEMENTS = (
    "ALTER TABLE budget_reservations DROP CONSTRAINT budget_reservations_amount_check",
    """
    ALTER TABLE budget_reservations ADD CONSTRAINT budget_reservations_amount_check
        CHECK (amount > 0 OR (amount = 0 AND state = 'released' AND cardinality(budget_ids) = 0))
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
