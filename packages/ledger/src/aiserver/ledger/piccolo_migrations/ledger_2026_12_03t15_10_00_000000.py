"""Daily rollups: the hourly rollups summed per day of the project's time zone. Frozen SQL;
later changes come as new migrations.

A spend question over 30 days by day reads some 700 hours of rollups, up to one row per hour and
combination of model, provider, status and rolled-up tag values (hundreds); the same days as
daily rows are 24 times fewer. `usage_rollups_daily` holds, per (project, day, model, provider,
status, tags), the sums of the hourly rollups whose hour lies whole in that day of the
project's clock. In a zone at a whole hour's offset that is every hour of the day; in a zone at
+05:30 it is the 23 whole UTC hours from 00:30 to 23:30 of its clock, and the hour from 23:30
to 00:30, which no day holds whole, is in no daily row (a spend read takes it from the hourly
rollups). It has no `usage_other`: spend does not read it.

It is kept by triggers on `usage_rollups`, so that every writer (the fold, a rebuild, a
reprice's corrections) changes both in one transaction: each statement's inserted, updated and
deleted hourly rows (transition tables) are summed per daily key and added, in key order (the
fold upserts its hourly rows in key order first, so two folders lock rows in one global order
and never deadlock); a daily row whose events fall to 0 is deleted. Changing a project's time
zone sums its daily rows again (`aiserver.ledger.spend.store.daily`).
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-03T15:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "daily rollups in the project's time zone, kept by triggers on usage_rollups"

STATEMENTS = (
    """
    CREATE TABLE usage_rollups_daily (
        project_id         BIGINT NOT NULL,
        day                DATE NOT NULL,
        model              TEXT NOT NULL,
        provider           TEXT NOT NULL,
        status             TEXT NOT NULL,
        tags               JSONB NOT NULL,
        events             BIGINT NOT NULL,
        unpriced_events    BIGINT NOT NULL,
        input_tokens       NUMERIC NOT NULL,
        output_tokens      NUMERIC NOT NULL,
        cache_read_tokens  NUMERIC NOT NULL,
        cache_write_tokens NUMERIC NOT NULL,
        reasoning_tokens   NUMERIC NOT NULL,
        cost               NUMERIC NOT NULL,
        PRIMARY KEY (project_id, day, model, provider, status, tags)
    )
    """,
    """
    CREATE FUNCTION ledger_rollups_daily() RETURNS trigger LANGUAGE plpgsql AS $fn$
    DECLARE
        columns CONSTANT text := 'project_id, hour, model, provider, status, tags, events,
            unpriced_events, input_tokens, output_tokens, cache_read_tokens,
            cache_write_tokens, reasoning_tokens, cost';
        delta text;
        emptied_projects bigint[];
        emptied_days date[];
        emptied_models text[];
        emptied_providers text[];
        emptied_statuses text[];
        emptied_tags jsonb[];
    BEGIN
        -- the statement's changes as signed rows: what it added (+1), what it took away (-1)
        delta := CASE TG_OP
            WHEN 'INSERT' THEN format('SELECT %s, 1 AS sign FROM new_rows', columns)
            WHEN 'UPDATE' THEN format('SELECT %s, 1 AS sign FROM new_rows UNION ALL '
                                      'SELECT %s, -1 FROM old_rows', columns, columns)
            ELSE format('SELECT %s, -1 AS sign FROM old_rows', columns)
        END;
        EXECUTE format($sql$
        WITH delta AS (%s), summed AS (
            SELECT d.project_id, (d.hour AT TIME ZONE p.time_zone)::date AS day, d.model,
                   d.provider, d.status, d.tags,
                   sum(d.sign * d.events)::bigint AS events,
                   sum(d.sign * d.unpriced_events)::bigint AS unpriced_events,
                   sum(d.sign * d.input_tokens) AS input_tokens,
                   sum(d.sign * d.output_tokens) AS output_tokens,
                   sum(d.sign * d.cache_read_tokens) AS cache_read_tokens,
                   sum(d.sign * d.cache_write_tokens) AS cache_write_tokens,
                   sum(d.sign * d.reasoning_tokens) AS reasoning_tokens,
                   sum(d.sign * d.cost) AS cost
            FROM delta d JOIN projects p ON p.id = d.project_id
            WHERE (d.hour AT TIME ZONE p.time_zone)::date
                  = ((d.hour + interval '59:59.999999') AT TIME ZONE p.time_zone)::date
            GROUP BY 1, 2, 3, 4, 5, 6
        ), changed AS (
            SELECT * FROM summed
            WHERE events <> 0 OR unpriced_events <> 0 OR input_tokens <> 0
               OR output_tokens <> 0 OR cache_read_tokens <> 0 OR cache_write_tokens <> 0
               OR reasoning_tokens <> 0 OR cost <> 0
        ), upserted AS (
            INSERT INTO usage_rollups_daily AS r
            SELECT * FROM changed ORDER BY project_id, day, model, provider, status, tags
            ON CONFLICT (project_id, day, model, provider, status, tags) DO UPDATE SET
                events = r.events + excluded.events,
                unpriced_events = r.unpriced_events + excluded.unpriced_events,
                input_tokens = r.input_tokens + excluded.input_tokens,
                output_tokens = r.output_tokens + excluded.output_tokens,
                cache_read_tokens = r.cache_read_tokens + excluded.cache_read_tokens,
                cache_write_tokens = r.cache_write_tokens + excluded.cache_write_tokens,
                reasoning_tokens = r.reasoning_tokens + excluded.reasoning_tokens,
                cost = r.cost + excluded.cost
            RETURNING r.project_id, r.day, r.model, r.provider, r.status, r.tags, r.events
        )
        SELECT array_agg(project_id), array_agg(day), array_agg(model), array_agg(provider),
               array_agg(status), array_agg(tags)
        FROM upserted WHERE events = 0
        $sql$, delta)
        INTO emptied_projects, emptied_days, emptied_models, emptied_providers, emptied_statuses,
             emptied_tags;
        -- a row the statement emptied goes, as if nothing had been folded there (its own
        -- statement: one statement cannot change a row twice)
        IF emptied_projects IS NOT NULL THEN
            DELETE FROM usage_rollups_daily r
            USING unnest(emptied_projects, emptied_days, emptied_models, emptied_providers,
                         emptied_statuses, emptied_tags)
                  AS z (project_id, day, model, provider, status, tags)
            WHERE r.events = 0 AND r.project_id = z.project_id AND r.day = z.day
              AND r.model = z.model AND r.provider = z.provider AND r.status = z.status
              AND r.tags = z.tags;
        END IF;
        RETURN NULL;
    END
    $fn$
    """,
    """
    CREATE TRIGGER usage_rollups_daily_insert AFTER INSERT ON usage_rollups
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_rollups_daily()
    """,
    """
    CREATE TRIGGER usage_rollups_daily_update AFTER UPDATE ON usage_rollups
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_rollups_daily()
    """,
    """
    CREATE TRIGGER usage_rollups_daily_delete AFTER DELETE ON usage_rollups
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_rollups_daily()
    """,
    """
    INSERT INTO usage_rollups_daily
    SELECT r.project_id, (r.hour AT TIME ZONE p.time_zone)::date, r.model, r.provider, r.status,
           r.tags, sum(r.events), sum(r.unpriced_events), sum(r.input_tokens),
           sum(r.output_tokens), sum(r.cache_read_tokens), sum(r.cache_write_tokens),
           sum(r.reasoning_tokens), sum(r.cost)
    FROM usage_rollups r JOIN projects p ON p.id = r.project_id
    WHERE (r.hour AT TIME ZONE p.time_zone)::date
          = ((r.hour + interval '59:59.999999') AT TIME ZONE p.time_zone)::date
    GROUP BY 1, 2, 3, 4, 5, 6
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
