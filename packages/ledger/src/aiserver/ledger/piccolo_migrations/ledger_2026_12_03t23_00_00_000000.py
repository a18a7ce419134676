"""A reservation in one statement. Frozen SQL; later changes come as new migrations.

- `ledger_reserve(project, zone, amount, tags, models, starts, stripes, expires)`: the quick way
  of `aiserver.ledger.budgets.reservations.reserve`, one round trip and one implicit transaction
  instead of five statements. It checks that the project's time zone is `zone` (the caller
  computed the windows in it: `starts` holds the current window start of `day`, `week`, `month`
  and `total`), then, for each hard budget of the project that a call with `tags` and one of
  `models` matches, in id order (the one lock order), takes `amount` on one stripe of the
  budget's window chosen at random (1 to stripes - 1; 0 when there is one stripe) by a
  conditional UPDATE, and finally inserts the reservation. It raises, and so undoes everything:
  - SQLSTATE `LR002` with the project's time zone as the message when that is not `zone`
    (an empty message: no such project);
  - SQLSTATE `LR003` with the budget's id as the message when that stripe does not exist yet or
    cannot hold the amount: the caller cuts that budget's window anew (all its stripes locked in
    order), which is also what refuses a reservation the whole window cannot hold.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-03T23:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "a reservation in one statement"

STATEMENTS = (
    """
    CREATE FUNCTION ledger_reserve(p BIGINT, zone TEXT, amount NUMERIC, call_tags JSONB,
                                   models TEXT[], starts TIMESTAMPTZ[], stripes INTEGER,
                                   expires TIMESTAMPTZ)
    RETURNS TABLE (reservation_id UUID, budget_ids BIGINT[], window_starts TIMESTAMPTZ[],
                   stripe_numbers SMALLINT[])
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        actual TEXT;
        b RECORD;
        w TIMESTAMPTZ;
        s SMALLINT;
        rid UUID;
        ids BIGINT[] := '{}';
        ws TIMESTAMPTZ[] := '{}';
        sts SMALLINT[] := '{}';
    BEGIN
        SELECT pr.time_zone INTO actual FROM projects AS pr WHERE pr.id = p;
        IF actual IS DISTINCT FROM zone THEN
            RAISE EXCEPTION USING ERRCODE = 'LR002', MESSAGE = COALESCE(actual, '');
        END IF;
        FOR b IN
            SELECT bu.id, bu.period, bu.limit_usd FROM budgets AS bu
            WHERE bu.project_id = p AND bu.hard AND call_tags @> bu.tags
              AND (bu.model IS NULL OR bu.model = ANY (models))
            ORDER BY bu.id
        LOOP
            w := CASE b.period WHEN 'day' THEN starts[1] WHEN 'week' THEN starts[2]
                               WHEN 'month' THEN starts[3] ELSE starts[4] END;
            s := CASE WHEN stripes > 1 THEN 1 + floor(random() * (stripes - 1)) ELSE 0 END;
            UPDATE budget_windows AS bw SET reserved = bw.reserved + amount
            WHERE bw.project_id = p AND bw.budget_id = b.id AND bw.window_start = w
              AND bw.stripe = s AND bw.share_limit = b.limit_usd
              AND bw.committed + bw.reserved + amount <= bw.share;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'LR003', MESSAGE = b.id::text;
            END IF;
            ids := ids || b.id;
            ws := ws || w;
            sts := sts || s;
        END LOOP;
        INSERT INTO budget_reservations (project_id, amount, budget_ids, window_starts, stripes,
                                         amounts, expires_at)
        VALUES (p, amount, ids, ws, sts, array_fill(amount, ARRAY[cardinality(ids)]), expires)
        RETURNING id INTO rid;
        RETURN QUERY SELECT rid, ids, ws, sts;
    END
    $$
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
