"""A budget counts from the window it was made in. Frozen SQL; later changes come as new
migrations.

`budgets.counts_from` is the start of the first window a budget counts: the window it was made
in (filled then with what the project had spent in it), or the one a time zone change made it
again in. An event of an earlier window counts for none of the budget's windows, at ingest or at
a reprice: before, a late event opened such a window with itself alone, and a reprice of an
older event of that window then moved a cost the window had never counted.

`ledger_window_start(period, zone, at)` draws a window's start as the code does
(`aiserver.ledger.budgets.periods.window_of`): local midnight of the day, ISO week or month that
holds `at`; where that midnight happens twice (clocks going back at 01:00 to 00:00), the first
of the two; where it does not happen, the first instant after the gap. (PostgreSQL's own
`timestamp AT TIME ZONE` takes the second of two, and reads the zone names CET, EET, MET and
WET as fixed offsets without summer time: the function reads them as the zone database does.)

For the budgets already made, `counts_from` is the window that held `created_at` in the
project's time zone now (`total`: its one window). A time zone change makes the current window
again at a later instant, so that start is never after a window a budget counts.

Compatible with the API of the release before, which keeps serving while this is applied: a
trigger fills `counts_from` for a budget inserted without it (from `created_at`), and the
functions ingest reads its budgets with are new ones (`ledger_ingest_budgets_v2`,
`ledger_ingest_start_v2`): the old ones, which the release before calls, stay as they were
until a later migration drops them.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T05:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "a budget counts from the window it was made in"

STATEMENTS = (
    """
    CREATE FUNCTION ledger_window_start(period TEXT, zone TEXT, at TIMESTAMPTZ)
    RETURNS TIMESTAMPTZ LANGUAGE plpgsql STABLE AS $$
    DECLARE
        -- PostgreSQL reads these zone names as its abbreviations (fixed offsets, no summer
        -- time); the zone database, as the code reads them, as the region zones named here
        z TEXT := CASE zone WHEN 'CET' THEN 'Europe/Brussels' WHEN 'MET' THEN 'Europe/Brussels'
                            WHEN 'EET' THEN 'Europe/Athens' WHEN 'WET' THEN 'Europe/Lisbon'
                            ELSE zone END;
        midnight TIMESTAMP;
        later TIMESTAMPTZ;
        step INTERVAL;
    BEGIN
        IF period = 'total' THEN
            RETURN TIMESTAMPTZ '1970-01-01 00:00:00+00';
        END IF;
        midnight := date_trunc(period, at AT TIME ZONE z);
        later := midnight AT TIME ZONE z;  -- of two instants, the second; in a gap, its end
        -- where local midnight happens twice, the first: back by each step a clock went back
        FOREACH step IN ARRAY ARRAY[interval '3 hours', interval '2 hours', interval '1 hour',
                                    interval '30 minutes'] LOOP
            IF (later - step) AT TIME ZONE z = midnight THEN
                RETURN later - step;
            END IF;
        END LOOP;
        RETURN later;
    END
    $$
    """,
    "ALTER TABLE budgets ADD COLUMN counts_from TIMESTAMPTZ",
    """
    UPDATE budgets AS b SET counts_from = ledger_window_start(b.period, pr.time_zone, b.created_at)
    FROM projects AS pr WHERE pr.id = b.project_id
    """,
    """
    CREATE FUNCTION ledger_budget_counts_from() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.counts_from IS NULL THEN
            NEW.counts_from := ledger_window_start(
                NEW.period, (SELECT pr.time_zone FROM projects AS pr WHERE pr.id = NEW.project_id),
                NEW.created_at
            );
        END IF;
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER budgets_counts_from BEFORE INSERT ON budgets
        FOR EACH ROW EXECUTE FUNCTION ledger_budget_counts_from()
    """,
    "ALTER TABLE budgets ALTER COLUMN counts_from SET NOT NULL",
    """
    CREATE FUNCTION ledger_ingest_budgets_v2(p BIGINT)
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
    CREATE FUNCTION ledger_ingest_start_v2(p BIGINT, catalog_lock BIGINT, catalog_source TEXT)
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
        RETURN QUERY SELECT COALESCE(v, 0), b.* FROM ledger_ingest_budgets_v2(p) AS b;
    END
    $$
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
