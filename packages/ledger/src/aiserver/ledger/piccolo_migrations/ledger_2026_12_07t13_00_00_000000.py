"""Ingest reads whether its project is archived, in its transaction. Frozen SQL; later changes
come as new migrations.

A request's key is checked when it arrives (from the keyring's cache); its events are written
later (its body read and decoded, its events priced, the catalog's lock waited for). A project
archived in between had the request's events recorded (2xx) after the archiving answered.
`ledger_ingest_start_v4` is `v3` with, in front, whether the project is archived, read in a
statement of its own after the row is taken FOR KEY SHARE: the ingest then refuses the request
whole (403 project-archived), writing nothing. (An ingest transaction already writing at the
archiving is not waited for: docs/keys.md.)

Compatible with the API of the release before, which keeps serving while this is applied: it
calls `ledger_ingest_start_v3`, which stays as it was.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-07T13:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "ingest reads whether its project is archived, in its transaction"

STATEMENTS = (
    """
    CREATE FUNCTION ledger_ingest_start_v4(p BIGINT, catalog_lock BIGINT, catalog_source TEXT)
    RETURNS TABLE (archived BOOLEAN, retention_days INTEGER, catalog_version BIGINT,
                   time_zone TEXT, budget_id BIGINT, tags TEXT, model TEXT, period TEXT,
                   limit_usd NUMERIC, thresholds NUMERIC[], has_webhook BOOLEAN,
                   counts_from TIMESTAMPTZ)
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        v BIGINT;
        r INTEGER;
        a BOOLEAN;
    BEGIN
        PERFORM pg_advisory_xact_lock_shared(catalog_lock);
        SELECT m.catalog_version INTO v FROM ai_cost_metadata AS m
        WHERE m.source = catalog_source;
        SELECT u.retention_days INTO r FROM usage_retention AS u;
        PERFORM 1 FROM projects AS pr WHERE pr.id = p FOR KEY SHARE;
        SELECT pr.archived_at IS NOT NULL INTO a FROM projects AS pr WHERE pr.id = p;
        RETURN QUERY SELECT a, r, COALESCE(v, 0), b.* FROM ledger_ingest_budgets_v2(p) AS b;
    END
    $$
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
