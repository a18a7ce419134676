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

Every writer of `usage_rollups` writes the daily rows in the same transaction, after its hourly
rows and in key order (so that two writers lock rows in one global order and never deadlock):
the fold sums the days of what it adds, a reprice's corrections add their deltas per day (and
delete a daily row whose events fall to 0), a rebuild or a change of the project's time zone sums
the project's daily rows again (`aiserver.ledger.spend.store.rollups`). This migration sums
them from the hourly rollups there are.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-03T15:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "daily rollups in the project's time zone"

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
