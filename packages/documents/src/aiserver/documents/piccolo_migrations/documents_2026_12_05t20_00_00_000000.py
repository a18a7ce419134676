"""Finished documents by when they finished, for the retention sweep. Frozen SQL; later changes
come as new migrations.

The hourly documents sweep deletes the documents done or failed more than
DOCUMENT_RETENTION_DAYS ago, oldest first, a few at a time: this partial index lets each batch
find them without reading the whole table.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T20:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "finished documents by when they finished (the retention sweep)"

STATEMENTS = (
    """
    CREATE INDEX documents_finished ON documents (finished_at)
        WHERE status IN ('done', 'failed')
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="documents", description=DESCRIPTION, statements=STATEMENTS
)
