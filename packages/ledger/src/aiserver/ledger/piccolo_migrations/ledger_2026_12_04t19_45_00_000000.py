"""A reservation's quick way refuses a window whose commits went past stripe 0's share. Frozen
SQL; later changes come as new migrations.

Ingest commits spend reported without a reservation to stripe 0 of a hard budget's window, and
never takes it out of the reservation stripes' shares. Once those commits took stripe 0 past
its share (the window past its limit, or near it), a reservation stripe that still had room in
its own share went on admitting reservations. `ledger_reserve_many` and `ledger_reserve` (kept
for API processes of the previous release during a rolling upgrade) are replaced by the same
functions whose conditional UPDATE also requires that stripe 0 of the window is within its
share; when it is not, the item is refused here (`full_budget`, or SQLSTATE `LR003`) and the
caller cuts the window anew, which checks the whole window: the reservation is admitted only if
the window as a whole still holds it. `aiserver.ledger.budgets.reservations.store.take_on_stripe`
(the slow way's first try) has the same condition.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-04T19:45:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "a reservation's quick way refuses a window whose commits went past stripe 0's share"

STATEMENTS = (
    """
    CREATE OR REPLACE FUNCTION ledger_reserve_many(p BIGINT, zone TEXT, starts TIMESTAMPTZ[],
                                        stripes INTEGER, amounts NUMERIC[], call_tags JSONB[],
                                        call_models JSONB[], expires TIMESTAMPTZ[])
    RETURNS TABLE (item INTEGER, reservation_id UUID, full_budget BIGINT, budget_ids BIGINT[],
                   window_starts TIMESTAMPTZ[], stripe_numbers SMALLINT[])
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        actual TEXT;
        n INTEGER := cardinality(amounts);
        h RECORD;
        refused BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n]);
        taken_items INTEGER[] := '{}';
        taken_budgets BIGINT[] := '{}';
        taken_windows TIMESTAMPTZ[] := '{}';
        taken_stripes SMALLINT[] := '{}';
        i INTEGER;
        k INTEGER;
        ids BIGINT[];
        ws TIMESTAMPTZ[];
        sts SMALLINT[];
        rid UUID;
    BEGIN
        -- the project's row first, as ingest takes it: its reservation rows' foreign key
        -- needs it, and a budget's deletion holds it while it deletes the windows
        SELECT pr.time_zone INTO actual FROM projects AS pr WHERE pr.id = p FOR KEY SHARE;
        IF actual IS DISTINCT FROM zone THEN
            RAISE EXCEPTION USING ERRCODE = 'LR002', MESSAGE = COALESCE(actual, '');
        END IF;
        FOR h IN
            WITH planned AS MATERIALIZED (
                SELECT x.i, bu.id AS budget_id, bu.limit_usd,
                       CASE bu.period WHEN 'day' THEN starts[1] WHEN 'week' THEN starts[2]
                                      WHEN 'month' THEN starts[3] ELSE starts[4] END AS w,
                       (CASE WHEN stripes > 1 THEN 1 + floor(random() * (stripes - 1))
                             ELSE 0 END)::SMALLINT AS s
                FROM generate_subscripts(amounts, 1) AS x(i)
                JOIN budgets AS bu
                  ON bu.project_id = p AND bu.hard AND call_tags[x.i] @> bu.tags
                 AND (bu.model IS NULL OR call_models[x.i] ? bu.model)
            )
            SELECT * FROM planned ORDER BY budget_id, w, s, i
        LOOP
            CONTINUE WHEN refused[h.i] IS NOT NULL;
            UPDATE budget_windows AS bw SET reserved = bw.reserved + amounts[h.i]
            WHERE bw.project_id = p AND bw.budget_id = h.budget_id AND bw.window_start = h.w
              AND bw.stripe = h.s AND bw.share_limit = h.limit_usd
              AND bw.committed + bw.reserved + amounts[h.i] <= bw.share
              AND NOT EXISTS (  -- stripe 0 past its share: what ingest committed took it over
                  SELECT FROM budget_windows AS z
                  WHERE z.project_id = p AND z.budget_id = h.budget_id AND z.window_start = h.w
                    AND z.stripe = 0 AND h.s <> 0 AND z.committed + z.reserved > z.share);
            IF FOUND THEN
                taken_items := taken_items || h.i;
                taken_budgets := taken_budgets || h.budget_id;
                taken_windows := taken_windows || h.w;
                taken_stripes := taken_stripes || h.s;
            ELSE
                refused[h.i] := h.budget_id;
                -- its holds given back at once, so that the items after it see the room
                FOR k IN 1 .. cardinality(taken_items) LOOP
                    CONTINUE WHEN taken_items[k] <> h.i;
                    UPDATE budget_windows AS bw SET reserved = bw.reserved - amounts[h.i]
                    WHERE bw.project_id = p AND bw.budget_id = taken_budgets[k]
                      AND bw.window_start = taken_windows[k] AND bw.stripe = taken_stripes[k];
                    taken_items[k] := 0;
                END LOOP;
            END IF;
        END LOOP;
        FOR i IN 1 .. coalesce(n, 0) LOOP
            IF refused[i] IS NOT NULL THEN
                RETURN QUERY SELECT i, NULL::UUID, refused[i], NULL::BIGINT[],
                                    NULL::TIMESTAMPTZ[], NULL::SMALLINT[];
                CONTINUE;
            END IF;
            ids := '{}';
            ws := '{}';
            sts := '{}';
            FOR k IN 1 .. coalesce(cardinality(taken_items), 0) LOOP
                IF taken_items[k] = i THEN
                    ids := ids || taken_budgets[k];
                    ws := ws || taken_windows[k];
                    sts := sts || taken_stripes[k];
                END IF;
            END LOOP;
            INSERT INTO budget_reservations (project_id, amount, budget_ids, window_starts,
                                             stripes, amounts, expires_at)
            VALUES (p, amounts[i], ids, ws, sts, array_fill(amounts[i], ARRAY[cardinality(ids)]),
                    expires[i])
            RETURNING id INTO rid;
            RETURN QUERY SELECT i, rid, NULL::BIGINT, ids, ws, sts;
        END LOOP;
    END
    $$
    """,
    """
    CREATE OR REPLACE FUNCTION ledger_reserve(p BIGINT, zone TEXT, amount NUMERIC, call_tags JSONB,
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
              AND bw.committed + bw.reserved + amount <= bw.share
              AND NOT EXISTS (  -- stripe 0 past its share: what ingest committed took it over
                  SELECT FROM budget_windows AS z
                  WHERE z.project_id = p AND z.budget_id = b.id AND z.window_start = w
                    AND z.stripe = 0 AND s <> 0 AND z.committed + z.reserved > z.share);
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
