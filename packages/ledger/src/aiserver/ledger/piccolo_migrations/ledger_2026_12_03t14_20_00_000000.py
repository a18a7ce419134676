"""Reservations against hard budgets. Frozen SQL; later changes come as new migrations.

- `budget_windows.share`, `share_limit`: how much of the limit a stripe of a window may hold
  (its committed plus reserved), and the limit that the shares were cut from. The shares of a
  window's stripes sum to that limit exactly; NULL until a reservation first splits the window.
  Stripe 0 holds what ingest commits; reservations take stripes 1 to N-1.
- `budget_reservations`: an estimate held on the windows of the hard budgets a coming call
  matches (one entry per budget: its window, stripe and amount, in parallel arrays), until the
  event that carries its id settles it, or it is released or expires.

Every key holds `project_id`.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-03T14:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "reservations against hard budgets"

STATEMENTS = (
    "ALTER TABLE budget_windows ADD COLUMN share NUMERIC, ADD COLUMN share_limit NUMERIC",
    """
    CREATE TABLE budget_reservations (
        project_id        BIGINT NOT NULL REFERENCES projects (id),
        id                UUID NOT NULL DEFAULT gen_random_uuid(),
        amount            NUMERIC NOT NULL CHECK (amount > 0),
        budget_ids        BIGINT[] NOT NULL,
        window_starts     TIMESTAMPTZ[] NOT NULL,
        stripes           SMALLINT[] NOT NULL,
        amounts           NUMERIC[] NOT NULL,
        created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
        expires_at        TIMESTAMPTZ NOT NULL,
        state             TEXT NOT NULL DEFAULT 'held'
                          CHECK (state IN ('held', 'settled', 'released', 'expired')),
        ended_at          TIMESTAMPTZ,
        settled_event_id  BIGINT,
        PRIMARY KEY (project_id, id),
        CHECK (cardinality(budget_ids) = cardinality(window_starts)
               AND cardinality(budget_ids) = cardinality(stripes)
               AND cardinality(budget_ids) = cardinality(amounts))
    )
    """,
    """
    CREATE INDEX budget_reservations_due ON budget_reservations (expires_at)
        WHERE state = 'held'
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
