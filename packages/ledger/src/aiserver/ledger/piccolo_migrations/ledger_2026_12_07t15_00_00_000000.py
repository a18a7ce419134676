"""A project's gate: what writes its usage, reservations or budget windows passes it shared,
what changes the project under them closes it, in the order they asked. Frozen SQL; later changes come as new
migrations.

Ingest and reservations take the project's row FOR KEY SHARE; changing its time zone (with
budgets), creating or deleting a budget, or changing a budget's levels waited for them with FOR
UPDATE on the row. Row locks do not queue: each new FOR KEY SHARE passes ahead of a waiting FOR
UPDATE, so on a project whose usage never pauses the change waited on and on (seconds measured
with eight overlapping writers, until its timeout); archiving did not wait for the writers at
all. Each of those changes now takes the project's row FOR NO KEY UPDATE (which the writers do
not wait for), then closes the project's gate, a transaction advisory lock (two keys: a
namespace the caller passes, and the project id) that the writers pass shared, first.
Heavyweight locks queue in order, so a change waits for the writers already through, and the
writers after it wait for it.

- `ledger_ingest_start_v5` is `v4` with the gate taken after the catalog's lock and before
  the row (the order a reprice takes them in: a batch holds the catalog's lock before it knows
  its projects).
- `ledger_reserve_many_v2` is `ledger_reserve_many` behind the gate, and refuses (SQLSTATE
  LR003, nothing reserved) when the project is archived: a reservation that waited for an
  archiving no longer holds an amount on the budgets of an archived project. It looks up each
  call's id by the primary key, and a call without one not at all, where `ledger_reserve_many`
  joined the ids with `budget_reservations`: in the benchmark's hot budget PostgreSQL spent
  0.58-0.63 ms per reservation with the join, 0.26-0.27 ms with the lookups (0.15-0.22 ms
  with no look at all, as before reservation ids).

The project id is folded into the second key by `% 2147483648` (ids past 2^31 share a gate with
the one 2^31 below: a change of one then waits for the other's writers too, nothing worse). The
row locks stay, so that API processes of the release before (calling `v4` and
`ledger_reserve_many`, which stay as they were) are excluded as before during a rolling upgrade.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-07T15:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "a project's gate: writers of its usage pass it shared, changes close it, in turn"

STATEMENTS = (
    """
    CREATE FUNCTION ledger_ingest_start_v5(p BIGINT, catalog_lock BIGINT, catalog_source TEXT,
                                           gate INTEGER)
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
        -- the catalog's lock, then the gate, then the row: the order reprices take them in
        PERFORM pg_advisory_xact_lock_shared(catalog_lock);
        PERFORM pg_advisory_xact_lock_shared(gate, (p % 2147483648)::INTEGER);
        SELECT m.catalog_version INTO v FROM ai_cost_metadata AS m
        WHERE m.source = catalog_source;
        SELECT u.retention_days INTO r FROM usage_retention AS u;
        PERFORM 1 FROM projects AS pr WHERE pr.id = p FOR KEY SHARE;
        SELECT pr.archived_at IS NOT NULL INTO a FROM projects AS pr WHERE pr.id = p;
        RETURN QUERY SELECT a, r, COALESCE(v, 0), b.* FROM ledger_ingest_budgets_v2(p) AS b;
    END
    $$
    """,
    """
    CREATE FUNCTION ledger_reserve_many_v2(gate INTEGER, p BIGINT, zone TEXT,
                                           starts TIMESTAMPTZ[], stripes INTEGER,
                                           amounts NUMERIC[], call_tags JSONB[],
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
        PERFORM pg_advisory_xact_lock_shared(gate, (p % 2147483648)::INTEGER);
        -- in a statement of its own, after the gate: an archiving it waited for is seen
        IF EXISTS (SELECT FROM projects AS pr WHERE pr.id = p AND pr.archived_at IS NOT NULL)
        THEN
            RAISE EXCEPTION USING ERRCODE = 'LR003', MESSAGE = 'the project is archived';
        END IF;
        -- the project's row, as ingest takes it: its reservation rows' foreign key needs it
        SELECT pr.time_zone INTO actual FROM projects AS pr WHERE pr.id = p FOR KEY SHARE;
        IF actual IS DISTINCT FROM zone THEN
            RAISE EXCEPTION USING ERRCODE = 'LR002', MESSAGE = COALESCE(actual, '');
        END IF;
        -- a call whose id names a reservation made before is a repeat: it holds nothing more
        -- (each id looked up by the primary key; a call without one looks up nothing)
        FOR i IN 1 .. coalesce(n, 0) LOOP
            IF keys[i] IS NOT NULL AND EXISTS (
                SELECT FROM budget_reservations AS r WHERE r.project_id = p AND r.id = keys[i]
            ) THEN
                repeated[i] := true;
            END IF;
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
