"""The project a document belongs to. Frozen SQL; later changes come as new migrations.

A document uploaded with a project's key belongs to that project: only that project's keys (and
the operator) read it. NULL is a document of no project: uploaded without a credential (as every
document before this column) or by the operator. No foreign key: documents are their own domain,
which knows nothing of the ledger's projects (a project is archived, never deleted).
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T23:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "the project a document belongs to (NULL: none)"

STATEMENTS = ("ALTER TABLE documents ADD COLUMN project_id BIGINT",)

forwards = sql_migration(
    migration_id=ID, app_name="documents", description=DESCRIPTION, statements=STATEMENTS
)
