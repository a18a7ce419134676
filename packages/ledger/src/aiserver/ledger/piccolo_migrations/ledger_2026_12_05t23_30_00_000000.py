"""The retention the partitions are kept by, for ingest to read. Frozen SQL; later changes come
as new migrations.

`USAGE_RETENTION_DAYS` is set on the API and on the task runner, which should agree. Where the
API's was the larger, it accepted (201) events of a month that the task runner's hourly
maintenance then dropped: a recorded event lost. Now each maintenance run writes the retention
it keeps the partitions by into `usage_retention` (one row) before it drops anything, and ingest
reads it in its transaction (`ledger_ingest_start_v3`): an event older than the smaller of the
two retentions is refused.

`v3` is `v2` with the recorded retention (NULL until a maintenance has run) in front, read after
the catalog's advisory lock is taken shared, in a statement of its own: a maintenance that wrote
a shorter retention and then waited for that lock taken exclusively (which it does before it
drops anything) is seen by every ingest transaction that got the lock after it.

Compatible with the API of the release before, which keeps serving while this is applied: it
calls `ledger_ingest_start_v2`, which stays as it was.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T23:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "the retention the usage partitions are kept by, read by ingest"

STATEMENTS = (
    """
    CREATE TABLE usage_retention (
        singleton       BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
        retention_days  INTEGER NOT NULL CHECK (retention_days BETWEEN 1 AND 36500),
        recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE FUNCTION ledger_ingest_start_v3(p BIGINT, catalog_lock BIGINT, catalog_source TEXT)
    RETURNS TABLE (retention_days INTEGER, catalog_version BIGINT, time_zone TEXT,
                   budget_id BIGINT, tags TEXT, model TEXT, period TEXT, limit_usd NUMERIC,
                   thresholds NUMERIC[], has_webhook BOOLEAN, counts_from TIMESTAMPTZ)
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        v BIGINT;
        r INTEGER;
    BEGIN
        PERFORM pg_advisory_xact_lock_shared(catalog_lock);
        SELECT m.catalog_version INTO v FROM ai_cost_metadata AS m
        WHERE m.source = catalog_source;
        SELECT u.retention_days INTO r FROM usage_retention AS u;
        RETURN QUERY SELECT r, COALESCE(v, 0), b.* FROM ledger_ingest_budgets_v2(p) AS b;
    END
    $$
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
