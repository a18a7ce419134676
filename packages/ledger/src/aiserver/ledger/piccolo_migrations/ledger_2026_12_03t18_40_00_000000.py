"""The catalog version an ingest priced with, checked in its transaction. Frozen SQL; later
changes come as new migrations.

- `ledger_ingest_start(project, catalog lock, source)`: the committed catalog version of
  `source`, then what `ledger_ingest_budgets` answers (the project's time zone and budgets,
  after taking the project's row FOR KEY SHARE), in one round trip. It first takes
  the catalog's advisory lock shared (`aiserver.costs.store.metadata.CATALOG_VERSION_LOCK`),
  which every change of the catalog version takes exclusive before it bumps the version: until
  the ingest's transaction ends no new catalog version commits, so the version it read is still
  the committed one at its COMMIT. Each statement of a VOLATILE function takes a new snapshot,
  so a version committed while the lock was awaited is seen.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-03T18:40:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "the catalog version in the ingest's transaction"

STATEMENTS = (
    """
    CREATE FUNCTION ledger_ingest_start(p BIGINT, catalog_lock BIGINT, catalog_source TEXT)
    RETURNS TABLE (catalog_version BIGINT, time_zone TEXT, budget_id BIGINT, tags TEXT,
                   model TEXT, period TEXT, limit_usd NUMERIC, thresholds NUMERIC[],
                   has_webhook BOOLEAN)
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        v BIGINT;
    BEGIN
        PERFORM pg_advisory_xact_lock_shared(catalog_lock);
        SELECT m.catalog_version INTO v FROM ai_cost_metadata AS m
        WHERE m.source = catalog_source;
        RETURN QUERY SELECT COALESCE(v, 0), b.* FROM ledger_ingest_budgets(p) AS b;
    END
    $$
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
