"""A hard budget admits no reservation while any stripe of its window is past its share.
Frozen SQL; later changes come as new migrations.

Settling a reservation moves the event's cost out of the reserving stripe's share into stripe
0's, where ingest commits it. A call that cost more than its estimate left stripe 0 at its share
and the reserving stripe past its own, and the quick way, which looked at stripe 0 only, went
on admitting on the other stripes of a window past its limit. `ledger_reserve_many` (the nine
arguments of the release before) now leaves a window with any other stripe past its share to
be cut anew, which checks the whole window (`reservations.take_on_stripe` does the same).

Compatible with the API of the release before, which calls the same function: replaced, it
refuses as the new one does. The function of eight arguments (two releases back) is left as
it was.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-06T21:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "a hard budget admits no reservation while any stripe of its window is past its share"

STATEMENTS = (
    """
    CREATE OR REPLACE FUNCTION ledger_reserve_many(p BIGINT, zone TEXT, starts TIMESTAMPTZ[],
                                        stripes INTEGER, amounts NUMERIC[], call_tags JSONB[],
                                        call_models JSONB[], expires TIMESTAMPTZ[],
                                        keys UUID[])
    RETURNS TABLE (item INTEGER, reservation_id UUID, full_budget BIGINT, budget_ids BIGINT[],
                   window_starts TIMESTAMPTZ[], stripe_numbers SMALLINT[])
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        actual TEXT;
        n INTEGER := cardinality(amounts);
        h RECORD;
        refused BIGINT[] := array_fill(NULL::BIGINT, ARRAY[n]);
        repeated BOOLEAN[] := array_fill(false, ARRAY[n]);
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
        -- a call whose id names a reservation made before is a repeat: it holds nothing more
        FOR i IN SELECT x.i FROM unnest(keys) WITH ORDINALITY AS x (id, i)
                 JOIN budget_reservations AS r ON r.project_id = p AND r.id = x.id
        LOOP
            repeated[i] := true;
        END LOOP;
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
            CONTINUE WHEN refused[h.i] IS NOT NULL OR repeated[h.i];
            UPDATE budget_windows AS bw SET reserved = bw.reserved + amounts[h.i]
            WHERE bw.project_id = p AND bw.budget_id = h.budget_id AND bw.window_start = h.w
              AND bw.stripe = h.s AND bw.share_limit = h.limit_usd
              AND bw.committed + bw.reserved + amounts[h.i] <= bw.share
              AND NOT EXISTS (  -- another stripe past its share: the window may be past
                  -- its limit (ingest's commits, or a settled call that cost more than its
                  -- estimate); left to be cut anew, which checks the whole window
                  SELECT FROM budget_windows AS z
                  WHERE z.project_id = p AND z.budget_id = h.budget_id AND z.window_start = h.w
                    AND z.stripe <> h.s AND z.committed + z.reserved > z.share);
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
            IF repeated[i] THEN  -- its id, no budget ids: the caller reads the reservation
                RETURN QUERY SELECT i, keys[i], NULL::BIGINT, NULL::BIGINT[],
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
            rid := NULL;
            INSERT INTO budget_reservations (project_id, id, amount, budget_ids, window_starts,
                                             stripes, amounts, expires_at)
            VALUES (p, coalesce(keys[i], gen_random_uuid()), amounts[i], ids, ws, sts,
                    array_fill(amounts[i], ARRAY[cardinality(ids)]), expires[i])
            ON CONFLICT (project_id, id) DO NOTHING
            RETURNING id INTO rid;
            IF rid IS NULL THEN
                -- a reservation of its id committed meanwhile, or an item before it in this
                -- statement made one: a repeat after all, its holds given back
                FOR k IN 1 .. coalesce(cardinality(taken_items), 0) LOOP
                    CONTINUE WHEN taken_items[k] <> i;
                    UPDATE budget_windows AS bw SET reserved = bw.reserved - amounts[i]
                    WHERE bw.project_id = p AND bw.budget_id = taken_budgets[k]
                      AND bw.window_start = taken_windows[k] AND bw.stripe = taken_stripes[k];
                END LOOP;
                RETURN QUERY SELECT i, keys[i], NULL::BIGINT, NULL::BIGINT[],
                                    NULL::TIMESTAMPTZ[], NULL::SMALLINT[];
                CONTINUE;
            END IF;
            RETURN QUERY SELECT i, rid, NULL::BIGINT, ids, ws, sts;
        END LOOP;
    END
    $$
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
