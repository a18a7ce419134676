"""Reservations of concurrent calls in one statement. Frozen SQL; later changes come as new
migrations.

- `ledger_reserve_many(project, zone, starts, stripes, amounts, call_tags, call_models,
  expires)`: the quick way of `aiserver.ledger.budgets.reservations.reserve` for several calls
  of one project at once (an API process gathers the reservations that arrive while its last
  statement runs): one round trip and one COMMIT for all of them. Item `i` is a call with tags
  `call_tags[i]` (a JSON object), models `call_models[i]` (a JSON array of names), the estimate
  `amounts[i]` and the expiry `expires[i]`. Each item is all or nothing on its own:
  - It checks once that the project's time zone is `zone` (the windows `starts`, of `day`,
    `week`, `month` and `total`, were computed in it), and raises SQLSTATE `LR002` with the
    project's zone as the message when it is not (an empty message: no such project): nothing is
    reserved for any item.
  - It plans one hold per item and matching hard budget, on one stripe of the budget's window
    chosen at random (1 to stripes - 1; 0 when there is one stripe), and takes the holds in the
    one lock order of `budget_windows` rows, (budget, window start, stripe), item by item, each
    by a conditional UPDATE.
  - The project's row is taken first (`FOR KEY SHARE`, as ingest takes it): a budget's
    deletion holds it while its windows go, and the reservation rows' foreign key needs it.
  - An item whose hold does not fit (or whose stripe does not exist yet) takes no further hold,
    gives back the holds it took at once (on rows this transaction already locked, so no new
    lock is taken out of order; the items after it see the room) and is answered with that
    budget's id (`full_budget`): the caller cuts that budget's window anew, which is also what
    refuses a reservation the whole window cannot hold.
  - Every other item gets its reservation row.
  One row is returned per item, in item order.

`ledger_reserve` (one call) stays for API processes of the previous release during a rolling
upgrade.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-04T05:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "reservations of concurrent calls in one statement"

STATEMENTS = (
    """
    CREATE FUNCTION ledger_reserve_many(p BIGINT, zone TEXT, starts TIMESTAMPTZ[],
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
              AND bw.committed + bw.reserved + amounts[h.i] <= bw.share;
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
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
