"""A project says when its rollups wait for a rebuild. Frozen SQL; later changes come as new
migrations.

A change of a project's rolled-up tag keys leaves its rollups keyed two ways (the old keys, and
the new ones for what folds after the change) until the rebuild it enqueues commits. Nothing
said so for a key removed: `rolled_up_tags` drops it at once. A reprice in that time keyed its
corrections by the new keys, so a correction of an event folded with the old keys went into a
row of its own (a cost-only one was dropped as a row of 0 events) until the rebuild.
`projects.rollup_rebuild_pending` is set by every change of the set of keys and cleared by the
rebuild that made the rollups for the keys as they are; a reprice that finds it set rebuilds the
project's rollups first. A project whose `rolled_up_tags` differ from its `rollup_tags` is
waiting for a rebuild now.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T00:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "projects say when their rollups wait for a rebuild"

STATEMENTS = (
    "ALTER TABLE projects ADD COLUMN rollup_rebuild_pending BOOLEAN NOT NULL DEFAULT false",
    """
    UPDATE projects SET rollup_rebuild_pending = true
    WHERE NOT (rollup_tags @> rolled_up_tags AND rolled_up_tags @> rollup_tags)
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
