"""A budget counts from the window it was made in. Frozen SQL; later changes come as new
migrations.

`budgets.counts_from` is the start of the first window a budget counts: the window it was made
in (filled then with what the project had spent in it), or the one a time zone change made it
again in. An event of an earlier window counts for none of the budget's windows, at ingest or at
a reprice: before, a late event opened such a window with itself alone, and a reprice of an
older event of that window then moved a cost the window had never counted.

For the budgets already made it is the start of the window that held `created_at` in the
project's time zone now (`total`: its one window). A time zone change made the current window
again at a later instant, so that start is never after a window a budget counts.

`ledger_ingest_budgets` and `ledger_ingest_start` answer it with each budget.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T05:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "a budget counts from the window it was made in"

STATEMENTS = (
    "ALTER TABLE budgets ADD COLUMN counts_from TIMESTAMPTZ",
    """
    UPDATE budgets AS b SET counts_from = CASE b.period
        WHEN 'total' THEN TIMESTAMPTZ '1970-01-01 00:00:00+00'
        ELSE date_trunc(b.period, b.created_at AT TIME ZONE pr.time_zone) AT TIME ZONE pr.time_zone
    END
    FROM projects AS pr WHERE pr.id = b.project_id
    """,
    "ALTER TABLE budgets ALTER COLUMN counts_from SET NOT NULL",
    "DROP FUNCTION ledger_ingest_start(BIGINT, BIGINT, TEXT)",
    "DROP FUNCTION ledger_ingest_budgets(BIGINT)",
    """
    CREATE FUNCTION ledger_ingest_budgets(p BIGINT)
    RETURNS TABLE (time_zone TEXT, budget_id BIGINT, tags TEXT, model TEXT, period TEXT,
                   limit_usd NUMERIC, thresholds NUMERIC[], has_webhook BOOLEAN,
                   counts_from TIMESTAMPTZ)
    LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM 1 FROM projects AS pr WHERE pr.id = p FOR KEY SHARE;
        RETURN QUERY
            SELECT pr.time_zone, b.id, b.tags::text, b.model, b.period, b.limit_usd,
                   b.thresholds, b.webhook_url IS NOT NULL, b.counts_from
            FROM projects AS pr LEFT JOIN budgets AS b ON b.project_id = pr.id
            WHERE pr.id = p
            ORDER BY b.id;
    END
    $$
    """,
    """
    CREATE FUNCTION ledger_ingest_start(p BIGINT, catalog_lock BIGINT, catalog_source TEXT)
    RETURNS TABLE (catalog_version BIGINT, time_zone TEXT, budget_id BIGINT, tags TEXT,
                   model TEXT, period TEXT, limit_usd NUMERIC, thresholds NUMERIC[],
                   has_webhook BOOLEAN, counts_from TIMESTAMPTZ)
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
