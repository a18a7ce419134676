"""Hourly rollups of usage, folded from `usage_outbox` by the task runner. Frozen SQL; later
changes come as new migrations.

One row per project, UTC hour, model, provider, pricing status and the event's values of the
project's rolled-up tag keys. Every part of the key is NOT NULL (a NULL never conflicts in an
upsert): an event without a provider rolls up under `''`, one without any rolled-up key under
`{}`. The sums are NUMERIC, so no sum of counts that each fit a BIGINT can overflow and stop the
folding.

`projects.rolled_up_tags` says which of the project's rolled-up keys every rollup row was folded
with: the keys of the last rebuild (or the first ones). A key added to `rollup_tags` joins it only
once a rebuild has made the project's rollups again; a removed one leaves it at once. Spend
answers read rollups only for keys in both.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-03T12:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "hourly usage rollups"

STATEMENTS = (
    "ALTER TABLE projects ADD COLUMN rolled_up_tags TEXT[] NOT NULL DEFAULT '{}'",
    "UPDATE projects SET rolled_up_tags = rollup_tags",
    """
    CREATE TABLE usage_rollups (
        project_id         BIGINT NOT NULL,
        hour               TIMESTAMPTZ NOT NULL
                           CHECK (hour = date_trunc('hour', hour, 'UTC')),
        model              TEXT NOT NULL,
        provider           TEXT NOT NULL,
        status             TEXT NOT NULL
                           CHECK (status IN ('priced', 'partially_priced', 'unpriced')),
        tags               JSONB NOT NULL,
        events             BIGINT NOT NULL,
        unpriced_events    BIGINT NOT NULL,
        input_tokens       NUMERIC NOT NULL,
        output_tokens      NUMERIC NOT NULL,
        cache_read_tokens  NUMERIC NOT NULL,
        cache_write_tokens NUMERIC NOT NULL,
        reasoning_tokens   NUMERIC NOT NULL,
        usage_other        JSONB NOT NULL,
        cost               NUMERIC NOT NULL,
        PRIMARY KEY (project_id, hour, model, provider, status, tags)
    )
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
