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
  archiving no longer holds an amount on the budgets of an archived project.

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
    BEGIN
        PERFORM pg_advisory_xact_lock_shared(gate, (p % 2147483648)::INTEGER);
        -- in a statement of its own, after the gate: an archiving it waited for is seen
        IF EXISTS (SELECT FROM projects AS pr WHERE pr.id = p AND pr.archived_at IS NOT NULL)
        THEN
            RAISE EXCEPTION USING ERRCODE = 'LR003', MESSAGE = 'the project is archived';
        END IF;
        RETURN QUERY SELECT * FROM ledger_reserve_many(p, zone, starts, stripes, amounts,
                                                       call_tags, call_models, expires, keys);
    END
    $$
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
