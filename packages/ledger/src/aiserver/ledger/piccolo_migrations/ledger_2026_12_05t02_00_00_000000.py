"""A key made by a dashboard form remembers the form that made it. Frozen SQL; later changes come
as new migrations.

`api_keys.form_token` holds the random token of the dashboard form that created the key (NULL
for a key made any other way), unique in its project: a form sent twice (a page refreshed after
it created a key) finds the key it made the first time instead of making a second one. The
token is no credential: it names a form, as a request id would.
"""

from aiserver.core_db.migrations import sql_migration

ID = "2026-12-05T02:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "the dashboard form that made a key, so that sending it twice makes one key"

STATEMENTS = (
    "ALTER TABLE api_keys ADD COLUMN form_token TEXT",
    """
    CREATE UNIQUE INDEX api_keys_by_form_token ON api_keys (project_id, form_token)
        WHERE form_token IS NOT NULL
    """,
)

forwards = sql_migration(
    migration_id=ID, app_name="ledger", description=DESCRIPTION, statements=STATEMENTS
)
