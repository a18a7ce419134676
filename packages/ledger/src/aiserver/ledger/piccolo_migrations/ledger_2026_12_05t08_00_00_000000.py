"""Projects stored with `CET`, `EET`, `MET` or `WET` get the region zone of the same rules, and
their daily rollups are summed again in it. Frozen SQL; later changes come as new migrations.

PostgreSQL reads those four names as fixed offsets without summer time; the zone database (the
code's `zoneinfo`) reads them as links to `Europe/Brussels`, `Europe/Athens`, `Europe/Brussels`
and `Europe/Lisbon`. They have been refused for new projects since the release before
(`aiserver.ledger.zones`), but a project given one earlier kept it, and its folds drew its days
with PostgreSQL's reading: from April to October each of its daily rollups held the hour from
23:00 to midnight of the day before, not the last hour of its own day.

Each such project, in id order: its row is taken (as a time zone change takes it), then its
rollup lock exclusively (folds leave its outbox rows until this commits, and a fold or reprice
in flight for it finishes first), its zone is renamed, and its daily rollups are summed again
from its hourly ones, which no zone touches. Its budgets are left as they are: their windows
were always drawn with `zoneinfo`, which reads the old name and the new one alike. The lock
space is ROLLUP_LOCK_SPACE of `aiserver.ledger.spend.store.rollups` (1109664021), the project's
key its `_PROJECT_LOCK`.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T08:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "projects with CET, EET, MET or WET get the region zone; their daily rollups resummed"

STATEMENTS = (
    """
    DO $$
    DECLARE
        renamed RECORD;
    BEGIN
        FOR renamed IN
            SELECT id FROM projects WHERE time_zone IN ('CET', 'EET', 'MET', 'WET')
            ORDER BY id
            FOR NO KEY UPDATE
        LOOP
            PERFORM pg_advisory_xact_lock(
                1109664021, ((renamed.id % 4294967296) - 2147483648)::int4
            );
            UPDATE projects
            SET time_zone = CASE time_zone
                    WHEN 'CET' THEN 'Europe/Brussels'
                    WHEN 'MET' THEN 'Europe/Brussels'
                    WHEN 'EET' THEN 'Europe/Athens'
                    WHEN 'WET' THEN 'Europe/Lisbon'
                END,
                updated_at = now()
            WHERE id = renamed.id;
            DELETE FROM usage_rollups_daily WHERE project_id = renamed.id;
            INSERT INTO usage_rollups_daily AS d (project_id, day, model, provider, status, tags,
                events, unpriced_events, input_tokens, output_tokens, cache_read_tokens,
                cache_write_tokens, reasoning_tokens, cost)
            SELECT x.project_id, (x.hour AT TIME ZONE p.time_zone)::date, x.model, x.provider,
                   x.status, x.tags, sum(x.events), sum(x.unpriced_events),
                   sum(x.input_tokens), sum(x.output_tokens), sum(x.cache_read_tokens),
                   sum(x.cache_write_tokens), sum(x.reasoning_tokens), sum(x.cost)
            FROM usage_rollups x JOIN projects p ON p.id = x.project_id
            WHERE x.project_id = renamed.id
              AND (x.hour AT TIME ZONE p.time_zone)::date
                  = ((x.hour + interval '59:59.999999') AT TIME ZONE p.time_zone)::date
            GROUP BY 1, 2, 3, 4, 5, 6
            ORDER BY 1, 2, 3, 4, 5, 6;
        END LOOP;
    END
    $$
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
