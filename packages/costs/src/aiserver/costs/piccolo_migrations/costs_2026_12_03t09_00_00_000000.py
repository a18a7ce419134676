"""Operator overrides get a validity, so that a replaced or deleted override is kept as history.

An override used to be one row per (provider, model), replaced in place by a PUT (which also reset
`created_at`) and removed by a DELETE, and it applied to every price version of its model, past
ones included. From here on a row is one override over a span of time: `valid_from` (when it
started to apply) and `valid_to` (when it stopped; NULL while it is current). A replacement closes
the current row and opens a new one; a deletion only closes it. The catalog applies to a call the
override valid at the call's time, so a call keeps the prices of its time.

Existing rows get `valid_from = created_at`. That is the best evidence there is, and it is exact
for what a row holds: a PUT reset `created_at` whenever it replaced the prices, so `created_at` is
the moment the row's present prices were set. What applied to the model before that (an earlier
price of the same override, or none) was overwritten in place and is not known; the history
therefore starts at `created_at`, and a call before it is priced without the override. Every
existing row stays current (`valid_to` NULL): the table allowed one row per (provider, model).

One current row per (provider, model) is now a partial unique index (WHERE valid_to IS NULL), in
place of the table's unique key: closed rows of the same model are many.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-03T09:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "override history: valid_from, valid_to"

STATEMENTS = (
    """
    ALTER TABLE ai_cost_overrides
        ADD COLUMN valid_from TIMESTAMPTZ NOT NULL DEFAULT now(),
        ADD COLUMN valid_to   TIMESTAMPTZ
    """,
    "UPDATE ai_cost_overrides SET valid_from = created_at",
    """
    ALTER TABLE ai_cost_overrides
        ADD CONSTRAINT ai_cost_overrides_valid_span
            CHECK (valid_to IS NULL OR valid_to >= valid_from),
        DROP CONSTRAINT ai_cost_overrides_provider_model_key
    """,
    # One current override per (provider, model): the database refuses a second.
    """
    CREATE UNIQUE INDEX ai_cost_overrides_one_current
        ON ai_cost_overrides (provider, model) WHERE valid_to IS NULL
    """,
)


forwards = sql_migration(
    migration_id=ID, app_name="costs", description=DESCRIPTION, statements=STATEMENTS
)
