"""One usage event by its id (`GET /v1/usage/events/{event_id}`). Frozen SQL.

The primary key of `usage_events` is (project_id, occurred_at, id): it finds a project's events
in time order, but an event named by its id alone would be a scan of every event of its project.
This index finds it in each partition at once. It is not unique (a unique index of a partitioned
table must hold the partition key); the id comes from one sequence, so it is unique all the same.
Each partition gets its copy when it is attached.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-04T09:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "usage events by id"

STATEMENTS = ("CREATE INDEX usage_events_by_id ON usage_events (project_id, id)",)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
